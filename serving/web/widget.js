/* The customer chat widget (docs/handoffs.md): POST v1/chat, and while a human has the
   conversation, their replies live from v1/sessions/{id}/events (polling v1/sessions/{id}/messages
   every 3 s while the stream is down). State that outlives a reload lives in sessionStorage. */
"use strict";

(function () {
  var BASE = location.pathname.replace(/[^/]*\/?$/, ""); // "/" or "/agent/" (a local multi-agent run)
  var KEY = "switchboard.widget.";
  var POLL_MS = 3000;
  var KEPT = 200;

  var $ = function (id) { return document.getElementById(id); };
  var log = $("messages");
  var input = $("message-input");
  var banner = $("handoff-banner");
  var notice = $("notice");

  var state = load();
  var live = { source: null, open: false, timer: null, retry: null };
  var outbox = Promise.resolve();

  function load() {
    var saved = null;
    try { saved = JSON.parse(SB.store.get(KEY + "state") || "null"); } catch (e) { saved = null; }
    if (!saved || !saved.sessionId) {
      saved = { sessionId: SB.newId("web-"), handoff: null, lastSeq: 0, items: [], rating: false };
    }
    return saved;
  }

  function save() {
    state.items = state.items.slice(-KEPT);
    SB.store.set(KEY + "state", JSON.stringify(state));
  }

  function url(path) { return BASE + path; }
  function sessionPath(what) {
    return url("v1/sessions/" + encodeURIComponent(state.sessionId) + "/" + what);
  }
  // The conversation's token (docs/security.md): every answer brings a fresh one, and every
  // later turn and read sends it back. EventSource cannot set a header: it goes in the query.
  function keep(reply) {
    if (reply && reply.session_token) { state.sessionToken = reply.session_token; save(); }
  }
  function sessionOpts(opts) {
    opts = opts || {};
    opts.sessionToken = state.sessionToken || undefined;
    return opts;
  }
  function withToken(path) {
    return state.sessionToken ? path + "&token=" + encodeURIComponent(state.sessionToken) : path;
  }

  // ---------------------------------------------------------------------------------------
  // Rendering: every item is kept in state.items so that a reload shows the conversation.

  function render(item) {
    var li;
    if (item.role === "system") {
      li = SB.el("li", { class: "msg system", "data-testid": "msg-system" }, [item.text]);
    } else {
      var who = item.role === "customer" ? "You" : item.role === "agent" ? (item.author || "Support agent") : "Assistant";
      li = SB.el("li", {
        class: "msg " + item.role,
        "data-testid": "msg-" + item.role,
        "data-kind": item.kind || null,
        "data-seq": item.seq || null,
      }, [
        SB.el("span", { class: "who", text: who + ":" }),
        " ",
        SB.el("span", { class: "text", text: item.text }),
      ]);
      if (item.sources && item.sources.length) {
        li.appendChild(SB.el("div", { class: "sources", "data-testid": "sources" }, [
          SB.el("span", { text: "Sources: " }),
          SB.el("ul", {}, item.sources.map(function (title) {
            return SB.el("li", { "data-testid": "source", text: title });
          })),
        ]));
      }
    }
    log.appendChild(li);
    li.scrollIntoView({ block: "end" });
    return li;
  }

  function add(item) {
    state.items.push(item);
    save();
    return render(item);
  }

  function showNotice(text) {
    notice.textContent = text || "";
    notice.hidden = !text;
  }

  function showBanner() {
    var h = state.handoff;
    if (!h || h.status === "resolved") {
      banner.hidden = true;
      banner.textContent = "";
      return;
    }
    var text;
    if (h.status === "claimed" && h.assignee) {
      text = h.assignee + " from our team is with you.";
    } else {
      text = "A person from our team will reply here soon.";
      if (h.queue_position) {
        text += " You are number " + h.queue_position + " in the queue.";
      }
    }
    banner.hidden = false;
    banner.textContent = "";
    banner.appendChild(SB.el("span", { "data-testid": "handoff-state", "data-status": h.status || "waiting", text: text }));
    if (h.queue_position && h.status !== "claimed") {
      banner.appendChild(SB.el("span", { "data-testid": "queue-position", hidden: true, text: String(h.queue_position) }));
    }
  }

  function showRating(show) {
    $("rating").hidden = !show;
    if (show) $("rating-thanks").hidden = true;
  }

  // ---------------------------------------------------------------------------------------
  // The handoff: its state, and the human side of the conversation while it is open.

  function setHandoff(h) {
    if (!h) return;
    var previous = state.handoff;
    state.handoff = Object.assign({}, previous && previous.id === h.id ? previous : {}, h);
    if (!state.handoff.status) state.handoff.status = "waiting";
    if (state.handoff.status === "resolved") {
      if (!previous || previous.status !== "resolved") showRating(true);
      stopLive();
    } else {
      startLive();
    }
    save();
    showBanner();
  }

  function onMessage(m) {
    if (!m || typeof m.seq !== "number" || m.seq <= state.lastSeq) return; // seen (stream + poll)
    state.lastSeq = m.seq;
    if (m.role === "customer") {
      save(); // shown when it was sent
      return;
    }
    add({ role: m.role, author: m.author, text: m.text, seq: m.seq });
  }

  function startLive() {
    if (live.source || live.timer) return;
    live.timer = setInterval(function () { if (!live.open) poll(); }, POLL_MS);
    openStream();
  }

  function openStream() {
    if (!window.EventSource) return; // polling alone
    var source = new EventSource(withToken(sessionPath("events?after=" + state.lastSeq)));
    live.source = source;
    source.onopen = function () { live.open = true; };
    source.addEventListener("message", function (event) {
      try { onMessage(JSON.parse(event.data)); } catch (e) { /* not JSON: ignored */ }
    });
    source.addEventListener("handoff", function (event) {
      try { setHandoff(JSON.parse(event.data)); } catch (e) { /* not JSON: ignored */ }
    });
    source.onerror = function () {
      live.open = false; // polled until the browser reconnects
      if (source.readyState === EventSource.CLOSED && live.source === source) {
        live.source = null; // refused (not a stream): try again later, polling meanwhile
        clearTimeout(live.retry);
        live.retry = setTimeout(function () { if (live.timer) openStream(); }, 15000);
      }
    };
  }

  function stopLive() {
    if (live.source) live.source.close();
    clearInterval(live.timer);
    clearTimeout(live.retry);
    live = { source: null, open: false, timer: null, retry: null };
  }

  function poll() {
    return SB.api("GET", sessionPath("messages?after=" + state.lastSeq), undefined, sessionOpts({ attempts: 1 })).then(
      function (body) {
        (body.messages || []).forEach(onMessage);
        if (typeof body.cursor === "number" && body.cursor > state.lastSeq) state.lastSeq = body.cursor;
        if (body.handoff) setHandoff(body.handoff);
      },
      function () { /* the next poll tries again */ }
    );
  }

  // ---------------------------------------------------------------------------------------
  // Sending: one message at a time, in order; each with its request id, kept for its retries.

  function waiting(seconds, why) {
    if (!why) return showNotice("");
    var s = Math.max(1, Math.round(seconds));
    showNotice(why === "busy"
      ? "We're a little busy right now. Trying again in " + s + " s…"
      : "Connection lost. Trying again in " + s + " s…");
  }

  function send(text, requestId, li) {
    li.classList.add("pending");
    li.removeAttribute("data-failed");
    var body = { session_id: state.sessionId, message: text, request_id: requestId, channel: "web" };
    outbox = outbox.then(function () {
      return SB.api("POST", url("v1/chat"), body, sessionOpts({ onWait: waiting, attempts: 8 })).then(
        function (reply) {
          li.classList.remove("pending");
          keep(reply);
          answered(reply);
        },
        function (error) {
          li.classList.remove("pending");
          li.setAttribute("data-failed", "true");
          var again = SB.el("button", { type: "button", class: "link", "data-testid": "resend", text: "Send again" });
          again.addEventListener("click", function () { again.remove(); send(text, requestId, li); });
          li.appendChild(SB.el("span", { class: "error", "data-testid": "send-error", text: " Not sent: " + error.message + " " }));
          li.appendChild(again);
        }
      );
    });
  }

  function answered(reply) {
    var kind = reply.reply_kind;
    var handedOff = kind === "handoff" || kind === "handoff_pending";
    if (reply.reply) {
      if (kind === "handoff_pending") {
        add({ role: "system", text: reply.reply, kind: kind });
      } else {
        add({
          role: "bot",
          text: reply.reply,
          kind: kind,
          sources: (reply.sources || []).map(function (s) { return s.title || s.id; }),
        });
      }
    }
    if (handedOff) {
      showRating(false);
      setHandoff(Object.assign({ status: "waiting" }, reply.handoff || {}));
    } else if (state.handoff && state.handoff.status !== "resolved") {
      setHandoff({ id: state.handoff.id, status: "resolved" }); // the bot answers again
    }
    if (reply.resolved) showRating(true);
    save();
  }

  $("composer").addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    var li = add({ role: "customer", text: text });
    send(text, SB.newId("msg-"), li);
    input.focus();
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });

  // ---------------------------------------------------------------------------------------
  // The customer's rating at the end of the conversation.

  $("rating").addEventListener("click", function (event) {
    var button = event.target.closest("button[data-rating]");
    if (!button) return;
    var rating = Number(button.getAttribute("data-rating"));
    var buttons = $("rating").querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; b.setAttribute("aria-pressed", String(b === button)); });
    SB.api("POST", sessionPath("rating"), { rating: rating, request_id: SB.newId("rating-") }, sessionOpts({ onWait: waiting })).then(
      function () {
        $("rating").hidden = true;
        $("rating-thanks").hidden = false;
        state.rating = true;
        save();
      },
      function (error) {
        buttons.forEach(function (b) { b.disabled = false; });
        showNotice("Your rating was not saved: " + error.message);
      }
    );
  });

  $("new-chat").addEventListener("click", function () {
    stopLive();
    SB.store.remove(KEY + "state");
    state = load();
    log.textContent = "";
    showRating(false);
    $("rating-thanks").hidden = true;
    showNotice("");
    showBanner();
    save();
    input.focus();
  });

  // ---------------------------------------------------------------------------------------
  // Start: the conversation so far (a reload), and the live part if a human has it.

  state.items.forEach(render);
  showBanner();
  if (state.handoff && state.handoff.status !== "resolved") {
    startLive();
    poll();
  }
  document.documentElement.setAttribute("data-session-id", state.sessionId);
  document.body.setAttribute("data-ready", "true");
})();
