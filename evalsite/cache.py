"""Django's Redis cache, keeping one client object per server instead of making one per call.

Django's RedisCacheClient builds a new ``redis.Redis`` for every get and set (on a shared
connection pool). With sessions in the cache, that construction ran on every request and cost
more CPU than the Redis round trip itself.
"""
from django.core.cache.backends import redis as django_redis


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
