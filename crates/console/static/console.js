// The console's one script. Everything works without it; with it, a
// running promotion's page follows the rollout live instead of reloading
// every few seconds. App output is attacker-controlled text: it is only
// ever inserted with textContent / text nodes, never as HTML.
"use strict";

// A page restored from the back/forward cache (Chromium keeps even
// no-store pages when it can) is asked for again, so after logout the
// back button shows the login page, not what the session saw.
window.addEventListener("pageshow", function (e) {
  if (e.persisted) {
    window.location.reload();
  }
});

(function () {
  const log = document.getElementById("events");
  if (!log || !log.dataset.stream) {
    return;
  }
  // The page rendered the events so far; the stream goes on after them.
  let url = log.dataset.stream;
  if (log.dataset.lastEvent) {
    url += "?after=" + encodeURIComponent(log.dataset.lastEvent);
  }
  // Follow the bottom unless the reader has scrolled up.
  let follow = true;
  log.addEventListener("scroll", function () {
    follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  });
  log.scrollTop = log.scrollHeight;

  let source = null;
  function open() {
    // EventSource resumes by itself with Last-Event-ID after a drop.
    source = new EventSource(url);
    source.onmessage = function (e) {
      log.appendChild(document.createTextNode(e.data + "\n"));
      if (follow) {
        log.scrollTop = log.scrollHeight;
      }
    };
    source.addEventListener("outcome", function () {
      source.close();
      // The server renders the outcome and the reason.
      window.location.reload();
    });
  }
  function close() {
    if (source) {
      source.close();
      source = null;
    }
  }
  // One stream per page, closed while the tab is hidden (browsers allow
  // few connections per origin over HTTP/1.1); reloading on return picks
  // up what was missed.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      close();
    } else if (!source) {
      window.location.reload();
    }
  });
  window.addEventListener("pagehide", close);
  open();
})();
