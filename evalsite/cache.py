"""Django's Redis cache, kept usable through a Redis outage.

Two changes to Django's backend:

* One client object per server instead of one per call. Django's RedisCacheClient builds a new
  ``redis.Redis`` for every get and set (on a shared connection pool); with sessions in the cache
  that construction ran on every request and cost more CPU than the Redis round trip itself.
* A Redis that cannot be reached is a cache miss, not an error. Sessions are read through the
  cache (``cached_db``) and reports are cached in it: while Redis is down, reads fall through to
  the database and writes go only there, so people stay logged in and pages still answer.

  A write the cache missed leaves its old copy in Redis: a session changed or deleted (logout)
  during the outage would come back from the cache afterwards. So each process remembers the
  keys it could not write and deletes them from Redis before its first cache call once Redis
  answers again, and the database copy is read from then on. (A process that exits during the
  outage forgets its keys; a session it changed may then be served from its old cached copy
  until that expires or changes again. The session's user check still refuses it after a
  password change.)
"""
import logging
import threading
import time

from django.core.cache.backends import redis as django_redis
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError)
RESYNC_INTERVAL_SECONDS = 1.0  # while Redis is still down, how often a call tries to clean up


class _ReusingClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            if index not in self._pools:
                self._pools[index] = self._pool_class.from_url(self._servers[index], **self._pool_options)
            # A redis.Redis is safe to share between threads; its pool hands each call a connection.
            client = self._clients[index] = self._client(connection_pool=self._pools[index])
        return client


class RedisCache(django_redis.RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = _ReusingClient
        self._unsynced = set()  # keys whose last write reached the database but not Redis
        self._lock = threading.Lock()
        self._next_resync = 0.0
        self._down = False

    # --- outage handling ---------------------------------------------------------------
    def _call(self, method, default, keys, version, write, *args):
        """``method(*args)``, with an unreachable Redis read as a miss.

        ``keys`` are the keys the call reads or (with ``write``) writes. A key whose last write
        did not reach Redis is not read from it until it has been deleted there.
        """
        if self._unsynced:
            self._resync()
            if self._unsynced and not write and not self._unsynced.isdisjoint(self._keys(keys, version)):
                return default  # Redis may hold an older copy: let the caller read the database
        try:
            result = method(*args)
        except OUTAGE_ERRORS as e:
            self._outage(e, self._keys(keys, version) if write else ())
            return default
        if self._down:
            self._down = False
            log.warning("Redis cache %s answers again", self._servers[0])
        if write and self._unsynced and result is not False:  # (add and touch say False when they did nothing)
            with self._lock:
                self._unsynced.difference_update(self._keys(keys, version))  # Redis has the new value now
        return result

    def _outage(self, error, keys_written):
        if not self._down:
            log.warning("Redis cache %s unreachable (%s): reading and writing the database only", self._servers[0],
                        error)
        self._down = True
        with self._lock:
            self._unsynced.update(keys_written)

    def _resync(self):
        now = time.monotonic()
        if now < self._next_resync:
            return
        with self._lock:
            keys = list(self._unsynced)
        try:
            self._cache.delete_many(keys)
        except OUTAGE_ERRORS:
            # Still down. Another try at the next call a second from now: each try costs a
            # connection attempt, which a Redis that hangs makes as long as the timeout.
            self._next_resync = now + RESYNC_INTERVAL_SECONDS
            return
        with self._lock:
            self._unsynced.difference_update(keys)
        log.warning("Redis cache %s answers again: dropped %d entries written during the outage",
                    self._servers[0], len(keys))

    def _keys(self, keys, version):
        return [self.make_and_validate_key(k, version=version) for k in keys]

    # --- Django's cache API --------------------------------------------------------------
    def get(self, key, default=None, version=None):
        return self._call(super().get, default, [key], version, False, key, default, version)

    def get_many(self, keys, version=None):
        keys = list(keys)
        return self._call(super().get_many, {}, keys, version, False, keys, version)

    def has_key(self, key, version=None):
        return self._call(super().has_key, False, [key], version, False, key, version)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call(super().add, False, [key], version, True, key, value, timeout, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call(super().set, None, [key], version, True, key, value, timeout, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call(super().set_many, list(data), list(data), version, True, data, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call(super().touch, False, [key], version, True, key, timeout, version)

    def delete(self, key, version=None):
        return self._call(super().delete, False, [key], version, True, key, version)

    def delete_many(self, keys, version=None):
        keys = list(keys)
        return self._call(super().delete_many, None, keys, version, True, keys, version)
