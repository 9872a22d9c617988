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

// A live log: a promotion's events, a build's log or the app's logs. The
// page rendered what there was; the stream goes on after it.
(function () {
  const log = document.getElementById("events");
  if (!log || !log.dataset.stream) {
    return;
  }
  let url = log.dataset.stream;
  if (log.dataset.lastEvent) {
    url += (url.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(log.dataset.lastEvent);
  }
  // Messages are the line itself, or (data-format="json") a JSON string
  // holding the exact text.
  const json = log.dataset.format === "json";
  // Each message one line, without its line break (data-lines).
  const lines = log.dataset.lines === "true";
  // Keep at most this many appended pieces (the app's logs).
  const cap = parseInt(log.dataset.cap || "0", 10);
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
      let text = json ? JSON.parse(e.data) : e.data;
      if (!json || lines) {
        text += "\n";
      }
      log.appendChild(document.createTextNode(text));
      while (cap > 0 && log.childNodes.length > cap) {
        log.removeChild(log.firstChild);
      }
      if (follow) {
        log.scrollTop = log.scrollHeight;
      }
    };
    source.addEventListener("outcome", function () {
      source.close();
      // The server renders the outcome and the reason.
      window.location.reload();
    });
    source.onerror = stopped;
  }
  watch(open, function () {
    if (source) {
      source.close();
      source = null;
    }
  }, function () {
    return source !== null;
  });
})();

// A page with a status stream (data-live on <main>): rendered again when
// what it shows changes.
(function () {
  const main = document.getElementById("main");
  if (!main || !main.dataset.live || document.getElementById("events")) {
    return;
  }
  let source = null;
  function open() {
    source = new EventSource(main.dataset.live);
    source.addEventListener("version", function (e) {
      if (e.data !== main.dataset.version) {
        source.close();
        window.location.reload();
      }
    });
    source.onerror = stopped;
  }
  watch(open, function () {
    if (source) {
      source.close();
      source = null;
    }
  }, function () {
    return source !== null;
  });
})();

// A stream the server refused (too many open) or that cannot reconnect:
// say so instead of going quiet.
function stopped(e) {
  if (e.target.readyState !== EventSource.CLOSED) {
    return;
  }
  const status = document.getElementById("live-status");
  const text = "Live updates stopped (reload the page to resume; too many console tabs open can cause this).";
  if (status) {
    status.textContent = text;
  } else {
    const p = document.createElement("p");
    p.id = "live-status";
    p.setAttribute("role", "status");
    p.textContent = text;
    document.getElementById("main").prepend(p);
  }
}

// One stream per page, closed while the tab is hidden (browsers allow few
// connections per site over HTTP/1.1); on return the page is rendered
// again, which picks up what was missed.
function watch(open, close, isOpen) {
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      close();
    } else if (!isOpen()) {
      window.location.reload();
    }
  });
  window.addEventListener("pagehide", close);
  open();
}
