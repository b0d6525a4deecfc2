/* Item page: rank by drag and drop or keyboard, mark harmlessness, submit once.
 *
 * The form's real fields are the per-response rank <select>s and harmless radios (they work
 * without JavaScript). This script drives them from the ranking tray: fixed places 1..k, each
 * holding at most one response chip, plus a pool of responses not ranked yet.
 */
(function () {
  "use strict";
  var form = document.getElementById("he-answer");
  if (!form) return;
  var slots = Array.prototype.slice.call(document.querySelectorAll(".he-slot-drop"));
  var pool = document.getElementById("he-pool");
  var asksRank = slots.length > 0;
  var asksHarmless = !!document.querySelector(".he-harm");
  var cards = Array.prototype.slice.call(document.querySelectorAll(".he-response"));
  var labels = cards.map(function (c) { return c.dataset.label; });
  var status = document.getElementById("he-status");
  var submitButton = document.getElementById("he-submit");
  var noun = form.dataset.noun || "Response";
  var picked = null;
  var submitting = false;

  function chip(label) { return document.querySelector('.he-chip[data-label="' + label + '"]'); }
  function card(label) { return document.getElementById("he-resp-" + label); }
  function rankSelect(label) { return form.querySelector('select[name="rank_' + label + '"]'); }
  function ordinal(n) {
    var s = n % 100 >= 11 && n % 100 <= 13 ? "th" : ({1: "st", 2: "nd", 3: "rd"}[n % 10] || "th");
    return n + s;
  }
  function say(text) { if (status) { status.textContent = text; } }

  // --- ranking state lives in the DOM: which slot holds which chip ------------------------
  function placeOf(label) {
    for (var i = 0; i < slots.length; i++) {
      var c = slots[i].querySelector(".he-chip");
      if (c && c.dataset.label === label) return i + 1;
    }
    return null;
  }
  function occupant(place) { return slots[place - 1].querySelector(".he-chip"); }

  function sync() {
    // Write the tray into the form fields and refresh badges and labels.
    labels.forEach(function (label) {
      var p = placeOf(label);
      var sel = rankSelect(label);
      if (sel) sel.value = p ? String(p) : "";
      var badge = document.querySelector('[data-badge-for="' + label + '"]');
      if (badge) {
        badge.textContent = p ? ordinal(p) : "not ranked";
        badge.classList.toggle("is-ranked", !!p);
      }
      var c = chip(label);
      if (c) {
        c.querySelector(".he-chip-place").textContent = p ? ordinal(p) : "";
        c.setAttribute("aria-label", noun + " " + label + (p ? ", ranked " + ordinal(p) : ", not ranked"));
      }
    });
    slots.forEach(function (s) { s.classList.toggle("is-empty", !s.querySelector(".he-chip")); });
    pool.classList.toggle("is-empty", !pool.querySelector(".he-chip"));
  }

  function put(label, place) {
    // Put `label` at `place` (1-based); whoever was there takes label's old spot (swap).
    var c = chip(label);
    var from = placeOf(label);
    var other = occupant(place);
    if (other && other !== c) {
      if (from) slots[from - 1].appendChild(other); else pool.appendChild(other);
    }
    slots[place - 1].appendChild(c);
    sortPool();
    sync();
    say(noun + " " + label + " is " + ordinal(place) + (other && other !== c ? "; " + other.dataset.label + " moved " + (from ? "to " + ordinal(from) : "out of the ranking") : "") + ".");
  }
  function unrank(label) {
    if (!placeOf(label)) return;
    pool.appendChild(chip(label));
    sortPool();
    sync();
    say(noun + " " + label + " is not ranked now.");
  }
  function sortPool() {
    var cs = Array.prototype.slice.call(pool.querySelectorAll(".he-chip"));
    cs.sort(function (a, b) { return labels.indexOf(a.dataset.label) - labels.indexOf(b.dataset.label); });
    cs.forEach(function (c) { pool.appendChild(c); });
  }
  function firstEmpty() {
    for (var i = 0; i < slots.length; i++) if (!occupant(i + 1)) return i + 1;
    return null;
  }
  function firstUnranked() {
    for (var i = 0; i < labels.length; i++) if (!placeOf(labels[i])) return labels[i];
    return null;
  }

  function pick(label, focus) {
    picked = label;
    cards.forEach(function (c) { c.classList.toggle("is-picked", c.dataset.label === label); });
    document.querySelectorAll(".he-chip").forEach(function (c) { c.classList.toggle("is-picked", c.dataset.label === label); });
    if (focus && chip(label)) chip(label).focus();
  }

  function setHarmless(label, value) {
    var input = form.querySelector('input[name="harmless_' + label + '"][value="' + value + '"]');
    if (input) {
      input.checked = true;
      say(noun + " " + label + " marked " + value + ".");
    }
  }

  function missing() {
    var problems = [];
    if (asksRank) {
      var unranked = labels.filter(function (l) { return !placeOf(l); });
      if (unranked.length) problems.push("Rank " + unranked.join(", ") + " first.");
    }
    if (asksHarmless) {
      var unmarked = labels.filter(function (l) { return !form.querySelector('input[name="harmless_' + l + '"]:checked'); });
      if (unmarked.length) problems.push("Mark " + unmarked.join(", ") + " harmless or harmful.");
    }
    return problems;
  }

  // --- drag and drop (SortableJS): pool and every slot share one group ------------------
  if (asksRank && window.Sortable) {
    var options = {
      group: "he-rank", animation: 120, ghostClass: "he-ghost", chosenClass: "he-chosen",
      // The fallback (pointer events, not HTML5 drag) behaves the same with mouse, touch and pen.
      forceFallback: true, fallbackTolerance: 3, emptyInsertThreshold: 24,
      onAdd: function (evt) {
        var to = evt.to;
        if (to.classList.contains("he-slot-drop")) {
          // A slot holds one response: the one that was there goes where the dragged one came from.
          Array.prototype.slice.call(to.querySelectorAll(".he-chip")).forEach(function (c) {
            if (c !== evt.item) evt.from.appendChild(c);
          });
        }
        sortPool();
        sync();
        pick(evt.item.dataset.label, false);
        var p = placeOf(evt.item.dataset.label);
        say(noun + " " + evt.item.dataset.label + (p ? " is " + ordinal(p) : " is not ranked") + ".");
      },
      onEnd: function () { sync(); }
    };
    slots.forEach(function (s) { window.Sortable.create(s, options); });
    window.Sortable.create(pool, options);
  }

  // Start from the form's values (a redisplay after an error, or an undone answer).
  if (asksRank) {
    labels.forEach(function (label) {
      var sel = rankSelect(label);
      var v = sel && parseInt(sel.value, 10);
      if (v && v >= 1 && v <= slots.length && !occupant(v)) slots[v - 1].appendChild(chip(label));
    });
    sync();
  }
  pick(labels[0], false);

  // Mouse: clicking a pool chip ranks it in the first free place; clicking a card picks it.
  if (asksRank) {
    pool.addEventListener("click", function (e) {
      var c = e.target.closest(".he-chip");
      if (!c) return;
      var place = firstEmpty();
      if (place) put(c.dataset.label, place);
      pick(c.dataset.label, false);
    });
    document.getElementById("he-slots").addEventListener("click", function (e) {
      var c = e.target.closest(".he-chip");
      if (c) pick(c.dataset.label, false);
    });
  }
  cards.forEach(function (c) {
    c.addEventListener("click", function (e) {
      if (e.target.closest("input,label,select,a,button")) return;
      pick(c.dataset.label, false);
    });
  });
  document.querySelectorAll(".he-chip").forEach(function (c) {
    c.addEventListener("focus", function () { pick(c.dataset.label, false); });
  });

  // --- keyboard -----------------------------------------------------------------------------
  document.addEventListener("keydown", function (e) {
    if (e.defaultPrevented || e.altKey || e.metaKey) return;
    var t = e.target;
    var typing = t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type === "text") || t.tagName === "SELECT");
    if (e.key === "Enter") {
      if (t && t.tagName === "TEXTAREA" && !e.ctrlKey) return;
      if (t && (t.tagName === "BUTTON" || t.tagName === "A" || t.tagName === "SUMMARY")) return;
      if (t && t.closest && t.closest(".he-skip")) return;
      e.preventDefault();
      form.requestSubmit ? form.requestSubmit(submitButton) : submitButton.click();
      return;
    }
    if (typing || e.ctrlKey) return;
    var key = e.key.length === 1 ? e.key.toUpperCase() : e.key;
    var onChip = t && t.classList && t.classList.contains("he-chip");
    if (asksHarmless && (key === "H" || key === "X") && picked) {
      e.preventDefault();
      setHarmless(picked, key === "H" ? "harmless" : "harmful");
      return;
    }
    if (labels.indexOf(key) >= 0) {
      e.preventDefault();
      pick(key, asksRank);
      return;
    }
    if (!asksRank || !picked) return;
    if (/^[1-9]$/.test(key) && parseInt(key, 10) <= slots.length) {
      e.preventDefault();
      var label = picked;
      put(label, parseInt(key, 10));
      var next = firstUnranked();
      pick(next || label, onChip);
      return;
    }
    if (key === "0" || key === "Delete" || key === "Backspace") {
      e.preventDefault();
      unrank(picked);
      if (onChip) chip(picked).focus();
      return;
    }
    var up = key === "ArrowUp" || key === "ArrowLeft";
    var down = key === "ArrowDown" || key === "ArrowRight";
    if ((up || down) && onChip) {
      e.preventDefault();
      var p = placeOf(picked);
      var target = p ? p + (up ? -1 : 1) : firstEmpty();
      if (target && target >= 1 && target <= slots.length) put(picked, target);
      chip(picked).focus();
    }
  });

  // --- time on page (visible time only) and a single submit --------------------------------
  var visibleMs = 0, since = document.hidden ? null : performance.now();
  document.addEventListener("visibilitychange", function () {
    if (document.hidden && since !== null) { visibleMs += performance.now() - since; since = null; }
    else if (!document.hidden && since === null) { since = performance.now(); }
  });
  form.addEventListener("submit", function (e) {
    if (submitting) { e.preventDefault(); return; }
    var problems = missing();
    if (problems.length) {
      e.preventDefault();
      say(problems.join(" "));
      status.classList.add("is-error");
      return;
    }
    var elapsed = visibleMs + (since === null ? 0 : performance.now() - since);
    form.querySelector('input[name="elapsed_ms"]').value = String(Math.round(elapsed));
    submitting = true;
    submitButton.setAttribute("aria-busy", "true");
    submitButton.disabled = true;
    status.classList.remove("is-error");
    say("Saving…");
  });
  // Coming back with the browser's back button restores a disabled button from the cache.
  window.addEventListener("pageshow", function () { submitting = false; submitButton.disabled = false; });

  var errors = document.getElementById("he-errors");
  if (errors) errors.focus();
})();
