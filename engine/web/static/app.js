// radbridge pages work without this file; it adds live updates and confirmations.
// Live regions: <element data-live="/events/url" data-refresh="/fragment/url">. On every event from
// the server-sent event stream the element's content is fetched again (same-origin, with the session
// cookie) and replaced; the stream reconnects by itself after a network blip.
(function () {
  "use strict";
  function refresh(el) {
    return fetch(el.dataset.refresh, { credentials: "same-origin", headers: { Accept: "text/html", "X-Radbridge-Refresh": "1" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); }  // signed out or idled out: to the sign-in page
        return r.ok ? r.text() : Promise.reject(r.status);
      })
      .then(function (html) { el.innerHTML = html; el.dispatchEvent(new CustomEvent("refreshed")); })
      .catch(function () { el.classList.add("stale"); });
  }
  function live(el) {
    var source = new EventSource(el.dataset.live);
    source.addEventListener("changed", function () { el.classList.remove("stale"); refresh(el); });
    source.onerror = function () { el.classList.add("stale"); };
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(live);
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.dataset.confirm)) { e.preventDefault(); }
      });
    });
  });
})();
