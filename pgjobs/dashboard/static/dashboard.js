// pgjobs dashboard: live refresh and confirmations. No framework, no build step; loaded
// from the same origin (the Content-Security-Policy allows no inline script).
//
// Live refresh: every data-refresh seconds the page fetches itself and swaps in the new
// <main id="live">. The button pauses it (remembered in localStorage); it also waits
// while the tab is hidden, while a form field has the focus, or while text is selected.
(function () {
  "use strict";
  var KEY = "pgjobs-live-paused";

  function paused() {
    try { return window.localStorage.getItem(KEY) === "1"; } catch (e) { return false; }
  }

  function setPaused(value) {
    try { window.localStorage.setItem(KEY, value ? "1" : "0"); } catch (e) { /* private mode */ }
  }

  function busy(live) {
    var active = document.activeElement;
    if (active && live.contains(active) && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(active.tagName)) {
      return true;
    }
    var selection = window.getSelection && window.getSelection();
    return Boolean(selection && String(selection).length);
  }

  function refresh(live, status) {
    if (paused() || document.hidden || busy(live)) { return Promise.resolve(); }
    return fetch(window.location.href, {credentials: "same-origin", headers: {"X-Pgjobs-Live": "1"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (fresh && !busy(live)) {
          live.replaceChildren.apply(live, Array.prototype.slice.call(fresh.childNodes));
          status.textContent = "updated " + new Date().toLocaleTimeString();
          status.classList.remove("stale");
        }
      })
      .catch(function (error) {
        status.textContent = "not updated: " + error.message;
        status.classList.add("stale");
      });
  }

  function startLive() {
    var live = document.getElementById("live");
    var button = document.getElementById("live-toggle");
    var status = document.getElementById("live-status");
    if (!live || !button || !status || live.dataset.live !== "on") { return; }
    var seconds = Math.max(1, Number(button.dataset.refresh) || 5);
    function label() {
      button.textContent = paused() ? "Resume live refresh" : "Pause live refresh";
      button.setAttribute("aria-pressed", paused() ? "true" : "false");
      status.textContent = paused() ? "paused" : "every " + seconds + " s";
    }
    button.addEventListener("click", function () { setPaused(!paused()); label(); });
    label();
    (function tick() {
      window.setTimeout(function () { refresh(live, status).then(tick); }, seconds * 1000);
    })();
  }

  // Forms that ask first: data-confirm holds the question. (Bulk actions have a
  // confirmation page of their own, which works without this script.)
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startLive);
  } else {
    startLive();
  }
})();
