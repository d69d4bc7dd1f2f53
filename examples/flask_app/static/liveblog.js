// Liveblog: keep the list of posts live over a WebSocket, publish without reloading.
//
// The connection reconnects by itself with exponential backoff (0.5 s doubling up to
// 10 s, with jitter, so that a restarted server is not hit by every page at once), and
// on every (re)connect fetches /posts.json to catch up on what was published while it
// was away. Without JavaScript the page still works: the form posts and reloads.
(function () {
  "use strict";

  var BACKOFF_START = 500;
  var BACKOFF_MAX = 10000;

  var body = document.body;
  var list = document.getElementById("posts");
  var empty = document.getElementById("empty");
  var statusBox = document.getElementById("status");
  var form = document.getElementById("publish");
  var errorBox = document.getElementById("error");
  var template = document.getElementById("post-template");

  var seen = new Set();
  list.querySelectorAll("[data-post-id]").forEach(function (item) {
    seen.add(Number(item.dataset.postId));
  });
  list.querySelectorAll("time[datetime]").forEach(showLocalTime);

  function showLocalTime(element) {
    var date = new Date(element.getAttribute("datetime"));
    if (!isNaN(date)) {
      element.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      element.title = date.toLocaleString();
    }
  }

  // Insert a post in id order (newest first) unless it is on the page already.
  function addPost(post, highlight) {
    if (!post || typeof post.id !== "number" || seen.has(post.id)) return;
    seen.add(post.id);
    var item = template.content.firstElementChild.cloneNode(true);
    item.dataset.postId = String(post.id);
    item.querySelector(".author").textContent = post.author;
    item.querySelector(".body").textContent = post.body;
    var time = item.querySelector("time");
    time.setAttribute("datetime", post.created);
    showLocalTime(time);
    if (highlight) item.classList.add("new");
    var before = null;
    for (var child = list.firstElementChild; child; child = child.nextElementSibling) {
      if (Number(child.dataset.postId) < post.id) { before = child; break; }
    }
    list.insertBefore(item, before);
    empty.hidden = true;
  }

  function setStatus(state, text) {
    statusBox.dataset.state = state;
    statusBox.querySelector(".label").textContent = text;
  }

  function catchUp() {
    return fetch(body.dataset.posts, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : { posts: [] }; })
      .then(function (data) {
        data.posts.slice().reverse().forEach(function (post) { addPost(post, true); });
      })
      .catch(function () { /* the next reconnect tries again */ });
  }

  var socket = null;
  var attempt = 0;
  var retryTimer = null;

  function socketUrl() {
    // A path is on this page's server; a full ws:// or wss:// URL (LIVEBLOG_SOCKET_URL)
    // points at an interface server elsewhere.
    var url = new URL(body.dataset.socket, window.location.href);
    if (url.protocol === "https:") url.protocol = "wss:";
    else if (url.protocol === "http:") url.protocol = "ws:";
    return url.href;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    setStatus("connecting", attempt ? "Reconnecting…" : "Connecting…");
    var ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (error) {
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.onopen = function () {
      attempt = 0;
      setStatus("live", "Live");
      catchUp();
    };
    ws.onmessage = function (event) {
      try {
        addPost(JSON.parse(event.data), true);
      } catch (error) {
        console.warn("liveblog: ignored a message that is not a post", event.data);
      }
    };
    ws.onclose = function () {
      if (socket !== ws) return;
      socket = null;
      scheduleReconnect();
    };
    ws.onerror = function () { ws.close(); };
  }

  function scheduleReconnect() {
    if (retryTimer !== null) return;
    var delay = Math.min(BACKOFF_MAX, BACKOFF_START * Math.pow(2, attempt));
    delay = delay * (0.8 + Math.random() * 0.4);
    attempt += 1;
    setStatus("connecting", "Reconnecting in " + Math.ceil(delay / 1000) + " s…");
    retryTimer = setTimeout(connect, delay);
  }

  // Back online or back to the tab: try now rather than at the end of a long backoff.
  function reconnectNow() {
    if (socket === null) {
      attempt = 0;
      connect();
    }
  }
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") reconnectNow();
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = form.querySelector("button");
    button.disabled = true;
    errorBox.hidden = true;
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        var parsed = response.json().catch(function () {
          return { error: "Publishing failed (HTTP " + response.status + ")." };
        });
        return parsed.then(function (data) {
          if (!response.ok) throw new Error(data.error || "Publishing failed.");
          addPost(data, false);
          form.elements.body.value = "";
          form.elements.body.focus();
        });
      })
      .catch(function (error) {
        errorBox.textContent = error instanceof TypeError
          ? "Could not reach the server; try again."
          : error.message;
        errorBox.hidden = false;
      })
      .finally(function () { button.disabled = false; });
  });

  connect();
})();
