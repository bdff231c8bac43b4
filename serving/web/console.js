/* The agent console (docs/handoffs.md, "Agent API"): the inbox of handoffs, one handoff's
   context, and the human's actions on it. Every call carries the agent's bearer token, so live
   updates read v1/handoffs/events with fetch() (EventSource cannot send the header), and poll
   v1/handoffs every 2 s while that stream is down. */
"use strict";

(function () {
  var BASE = location.pathname.replace(/[^/]*\/?$/, ""); // "/" or "/agent/" (a local multi-agent run)
  var TOKEN_KEY = "switchboard.console.token";
  var POLL_MS = 2000;

  var $ = function (id) { return document.getElementById(id); };
  var state = {
    token: SB.store.get(TOKEN_KEY),
    me: null,
    intents: [],
    filter: "open",
    records: [],       // the inbox as last listed, oldest first
    selected: null,    // the record on the right, kept current by the list, events and answers
    busy: false,
  };
  var live = { abort: null, open: false, poll: null, backoff: 1000, refreshing: null, refreshAgain: false };

  function url(path) { return BASE + path; }
  function call(method, path, body) {
    return SB.api(method, url(path), body, { token: state.token, attempts: 5 }).catch(function (error) {
      if (error.status === 401) signOut("Your token was not accepted. Please sign in again.");
      throw error;
    });
  }

  // ---------------------------------------------------------------------------------------
  // Messages to the agent

  function showError(error) {
    var box = $("error");
    if (!error) { box.hidden = true; box.textContent = ""; return; }
    box.hidden = false;
    box.textContent = "";
    box.appendChild(SB.el("strong", { "data-testid": "error-code", text: error.code || "error" }));
    box.appendChild(document.createTextNode(": " + (error.message || String(error))));
  }

  function saved(text) { $("saved").textContent = text; }

  function setLive(mode) {
    var box = $("live-state");
    box.hidden = false;
    box.setAttribute("data-mode", mode);
    box.textContent = mode === "stream" ? "Live" : mode === "poll" ? "Updating every 2 s" : "";
  }

  // ---------------------------------------------------------------------------------------
  // Signing in and out

  function signIn(token) {
    state.token = token;
    return call("GET", "v1/handoffs?status=" + state.filter).then(function (body) {
      SB.store.set(TOKEN_KEY, token);
      $("sign-in").hidden = true;
      $("workspace").hidden = false;
      $("whoami").hidden = false;
      listed(body);
      showError(null);
      startLive();
    });
  }

  function signOut(why) {
    stopLive();
    SB.store.remove(TOKEN_KEY);
    state.token = null;
    state.me = null;
    state.selected = null;
    state.records = [];
    $("workspace").hidden = true;
    $("whoami").hidden = true;
    $("live-state").hidden = true;
    $("sign-in").hidden = false;
    $("token-input").value = "";
    $("token-input").focus();
    showError(why ? { code: "unauthenticated", message: why } : null);
  }

  $("sign-in").addEventListener("submit", function (event) {
    event.preventDefault();
    var token = $("token-input").value.trim();
    if (!token) return;
    signIn(token).catch(function (error) {
      if (error.status !== 401) showError(error);
    });
  });
  $("sign-out").addEventListener("click", function () { signOut(null); });

  // ---------------------------------------------------------------------------------------
  // The inbox

  function listed(body) {
    state.me = body.me || state.me;
    state.intents = body.intents || state.intents;
    state.records = body.handoffs || [];
    $("me").textContent = state.me || "";
    if (state.selected) {
      var fresh = find(state.selected.id);
      if (fresh && fresh.version >= state.selected.version) state.selected = fresh;
    }
    renderInbox();
    renderDetail();
  }

  function find(id) {
    for (var i = 0; i < state.records.length; i++) if (state.records[i].id === id) return state.records[i];
    return null;
  }

  function matches(record) {
    if (state.filter === "all") return true;
    var open = record.status !== "resolved";
    return state.filter === "open" ? open : !open;
  }

  /* A record from an event or an answer: newer versions replace older ones. */
  function upsert(record) {
    if (!record || !record.id) return;
    var known = find(record.id);
    if (known && known.version > record.version) return;
    if (known && known.queue_position !== undefined && record.queue_position === undefined && record.status === "waiting") {
      record.queue_position = known.queue_position; // the next listing recomputes it
    }
    state.records = state.records.filter(function (r) { return r.id !== record.id; });
    if (matches(record)) {
      state.records.push(record);
      state.records.sort(function (a, b) { return a.created_at - b.created_at; });
    }
    if (state.selected && state.selected.id === record.id && record.version >= state.selected.version) {
      state.selected = record;
    }
    renderInbox();
    renderDetail();
  }

  function refresh() {
    if (!state.token) return Promise.resolve();
    if (live.refreshing) { live.refreshAgain = true; return live.refreshing; }
    live.refreshing = SB.api("GET", url("v1/handoffs?status=" + state.filter), undefined, { token: state.token, attempts: 1 })
      .then(listed, function (error) {
        if (error.status === 401) signOut("Your token was not accepted. Please sign in again.");
      })
      .then(function () {
        live.refreshing = null;
        if (live.refreshAgain) { live.refreshAgain = false; return refresh(); }
      });
    return live.refreshing;
  }

  function renderInbox() {
    var list = $("inbox");
    list.textContent = "";
    var now = Date.now() / 1000;
    state.records.forEach(function (r) {
      var selected = state.selected && state.selected.id === r.id;
      var where = r.status === "waiting" && r.queue_position ? "#" + r.queue_position + " in queue" : r.status;
      var button = SB.el("button", {
        type: "button",
        class: "inbox-item" + (selected ? " selected" : ""),
        "data-testid": "inbox-item",
        "data-id": r.id,
        "data-status": r.status,
        "aria-current": selected ? "true" : null,
      }, [
        SB.el("span", { class: "reason", "data-testid": "inbox-reason", text: r.reason }),
        SB.el("span", { class: "trigger-excerpt", "data-testid": "inbox-trigger", text: "“" + r.trigger + "”" }),
        SB.el("span", { class: "meta" }, [
          SB.el("span", { "data-testid": "inbox-queue", text: where }),
          " · ",
          SB.el("span", { "data-testid": "inbox-age", text: SB.age(now - r.created_at) + " ago" }),
          " · ",
          SB.el("span", { "data-testid": "inbox-assignee", text: r.assignee || "unassigned" }),
        ]),
      ]);
      button.addEventListener("click", function () { select(r); });
      list.appendChild(SB.el("li", {}, [button]));
    });
    $("inbox-empty").hidden = state.records.length > 0;
  }

  function select(record) {
    var changed = !state.selected || state.selected.id !== record.id;
    state.selected = record;
    if (changed) {
      $("reply-input").value = "";
      $("transfer-to").value = "";
      $("bot-rating-value").value = record.bot_rating ? String(record.bot_rating) : "";
      saved("");
      showError(null);
    }
    renderInbox();
    renderDetail(changed);
  }

  $("status-filter").addEventListener("change", function () {
    state.filter = $("status-filter").value;
    refresh();
  });

  // ---------------------------------------------------------------------------------------
  // One handoff

  function line(role, text, attrs) {
    var who = role.who || role.role;
    return SB.el("li", Object.assign({ class: "msg " + role.role, "data-testid": "transcript-" + role.role }, attrs || {}), [
      SB.el("span", { class: "who", text: who + ":" }),
      " ",
      SB.el("span", { class: "text", text: text }),
    ]);
  }

  function term(list, name, value, testid) {
    list.appendChild(SB.el("dt", { text: name }));
    var dd = SB.el("dd", { "data-testid": testid });
    if (typeof value === "string") dd.textContent = value;
    else if (value) dd.appendChild(value);
    list.appendChild(dd);
  }

  function renderDetail(changed) {
    var r = state.selected;
    $("detail").hidden = !r;
    if (!r) return;
    var mine = r.assignee === state.me;
    var open = r.status !== "resolved";
    var free = !r.assignee || mine;
    $("detail-title").textContent = "Conversation " + (r.customer_id ? "with " + r.customer_id : r.session_id);

    var facts = $("facts");
    facts.textContent = "";
    var bits = [
      ["status", r.status + (r.status === "waiting" && r.queue_position ? " (#" + r.queue_position + " in queue)" : "")],
      ["assignee", r.assignee ? (mine ? r.assignee + " (you)" : r.assignee) : "unassigned"],
      ["opened", SB.age(Date.now() / 1000 - r.created_at) + " ago"],
      ["ticket", r.ticket_id ? r.ticket_id + (r.ticket_queued ? " (queued)" : "") : r.ticket_queued ? "queued" : "none"],
    ];
    bits.forEach(function (b, i) {
      if (i) facts.appendChild(document.createTextNode(" · "));
      facts.appendChild(SB.el("span", { "data-testid": "fact-" + b[0] }, [b[0] + ": ", SB.el("strong", { text: b[1] })]));
    });

    // The conversation: the bot's part (ending with the trigger, highlighted), then the human part.
    var transcript = $("transcript");
    var atEnd = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
    var before = transcript.childElementCount;
    transcript.textContent = "";
    var lines = r.transcript || [];
    var triggerAt = -1;
    for (var i = lines.length - 1; i >= 0; i--) {
      if (lines[i].role === "customer" && lines[i].text === r.trigger) { triggerAt = i; break; }
    }
    lines.forEach(function (t, index) {
      var isTrigger = index === triggerAt;
      var li = line({ role: t.role === "customer" ? "customer" : "bot", who: t.role === "customer" ? "Customer" : "Assistant" }, t.text,
        isTrigger ? { class: "msg customer trigger", "data-testid": "trigger", "aria-label": "Handed to a person after: " + t.text } : null);
      transcript.appendChild(li);
    });
    if (triggerAt < 0) {
      transcript.appendChild(line({ role: "customer", who: "Customer" }, r.trigger,
        { class: "msg customer trigger", "data-testid": "trigger", "aria-label": "Handed to a person after: " + r.trigger }));
    }
    transcript.appendChild(SB.el("li", { class: "msg system divider", "data-testid": "transcript-handoff", text: "Handed to a person: " + r.reason }));
    (r.messages || []).forEach(function (m) {
      var who = m.role === "customer" ? "Customer" : m.role === "agent" ? (m.author || "Agent") : "Notice";
      transcript.appendChild(line({ role: m.role, who: who }, m.text, { "data-seq": m.seq }));
    });
    // Follow the conversation: a newly opened one, or new messages while reading its end.
    if (changed || (atEnd && transcript.childElementCount !== before)) transcript.scrollTop = transcript.scrollHeight;

    // The context the bot had.
    var context = $("context");
    context.textContent = "";
    term(context, "Reason", r.reason, "ctx-reason");
    term(context, "Intent", r.intent ? r.intent + (r.confidence !== null && r.confidence !== undefined ? " (" + Math.round(r.confidence * 100) + "% confident)" : "") : "unknown", "ctx-intent");
    var slots = Object.keys(r.slots || {});
    term(context, "Slots", slots.length ? SB.el("ul", {}, slots.map(function (k) {
      return SB.el("li", { text: k + ": " + (typeof r.slots[k] === "string" ? r.slots[k] : JSON.stringify(r.slots[k])) });
    })) : "none", "ctx-slots");
    var actions = r.attempted_actions || [];
    term(context, "Attempted actions", actions.length ? SB.el("ul", {}, actions.map(function (a) {
      return SB.el("li", { text: a.operation + ": " + a.status + (a.task_id ? " (" + a.task_id + ")" : "") });
    })) : "none", "ctx-actions");
    var policy = r.policy || [];
    term(context, "Policy decisions", policy.length ? SB.el("ul", {}, policy.map(function (p) {
      return SB.el("li", { text: typeof p === "string" ? p : JSON.stringify(p) });
    })) : "none", "ctx-policy");
    term(context, "Proposed action", r.proposed_action ? SB.el("pre", { text: JSON.stringify(r.proposed_action, null, 2) }) : "none", "ctx-proposed");
    term(context, "Ticket", r.ticket_id || (r.ticket_queued ? "queued" : "none"), "ctx-ticket");
    if (r.csat) term(context, "Customer rating", r.csat + " / 5", "ctx-csat");

    // Review: corrections of the intent, and the bot's rating.
    renderCorrectionForm(r, changed);
    var corrections = $("corrections");
    corrections.textContent = "";
    (r.corrections || []).forEach(function (c) {
      var label = c.corrected_intent === "oos" ? "out of scope" : c.corrected_intent;
      corrections.appendChild(SB.el("li", { "data-testid": "correction", "data-intent": c.corrected_intent,
        text: "“" + c.text + "” → " + label + " (by " + c.by + ")" }));
    });

    // What this agent may do now.
    $("claim").disabled = state.busy || !open || mine || !!r.assignee;
    $("claim").title = r.assignee && !mine ? "Claimed by " + r.assignee : "";
    $("resolve").disabled = state.busy || !open || !free;
    setForm("reply-form", !state.busy && open && mine);
    setForm("transfer-form", !state.busy && open && mine);
    setForm("correction-form", !state.busy && free);
    setForm("bot-rating", !state.busy && free);
  }

  function setForm(id, enabled) {
    Array.prototype.forEach.call($(id).elements, function (e) { e.disabled = !enabled; });
  }

  function renderCorrectionForm(r, changed) {
    var intentSelect = $("correction-intent");
    var chosen = changed ? "" : intentSelect.value;
    intentSelect.textContent = "";
    intentSelect.appendChild(SB.el("option", { value: "", text: "choose…" }));
    state.intents.forEach(function (label) {
      if (label === "oos") return;
      intentSelect.appendChild(SB.el("option", { value: label, text: label }));
    });
    intentSelect.appendChild(SB.el("option", { value: "oos", text: "out of scope" }));
    intentSelect.value = chosen;

    var textSelect = $("correction-text");
    var text = changed ? "" : textSelect.value;
    textSelect.textContent = "";
    textSelect.appendChild(SB.el("option", { value: "", text: "“" + r.trigger + "” (handed off)" }));
    var seen = {};
    seen[r.trigger] = true;
    (r.transcript || []).concat(r.messages || []).forEach(function (m) {
      if (m.role !== "customer" || seen[m.text]) return;
      seen[m.text] = true;
      textSelect.appendChild(SB.el("option", { value: m.text, text: "“" + m.text + "”" }));
    });
    textSelect.value = seen[text] ? text : "";
  }

  // ---------------------------------------------------------------------------------------
  // Actions: each with a fresh request id, reused by the retries inside SB.api.

  function act(path, body, done) {
    var r = state.selected;
    if (!r || state.busy) return;
    body.request_id = SB.newId("console-");
    state.busy = true;
    renderDetail();
    call("POST", "v1/handoffs/" + encodeURIComponent(r.id) + "/" + path, body).then(
      function (record) {
        state.busy = false;
        showError(null);
        if (record && record.id) upsert(record);
        else renderDetail();
        if (done) done(record);
        refresh();
      },
      function (error) {
        state.busy = false;
        renderDetail();
        showError(error);
        refresh();
      }
    );
  }

  $("claim").addEventListener("click", function () { act("claim", {}, function () { $("reply-input").focus(); }); });
  $("resolve").addEventListener("click", function () { act("resolve", {}, function () { saved("Resolved: the assistant has the conversation again."); }); });
  $("reply-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var text = $("reply-input").value.trim();
    if (!text) return;
    act("reply", { text: text }, function () { $("reply-input").value = ""; });
  });
  $("reply-input").addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("reply-form").requestSubmit();
  });
  $("transfer-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var to = $("transfer-to").value.trim();
    if (!to) return;
    act("transfer", { to: to }, function () { $("transfer-to").value = ""; saved("Transferred to " + to + "."); });
  });
  $("correction-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var intent = $("correction-intent").value;
    if (!intent) return;
    var body = { intent: intent };
    if ($("correction-text").value) body.text = $("correction-text").value;
    act("correction", body, function () { saved("Correction saved."); });
  });
  $("bot-rating").addEventListener("submit", function (event) {
    event.preventDefault();
    var rating = Number($("bot-rating-value").value);
    if (!rating) return;
    act("rating", { rating: rating }, function () { saved("Rating saved."); });
  });

  // ---------------------------------------------------------------------------------------
  // Live updates: the event stream over fetch(); polling while it is down.

  function startLive() {
    if (live.abort) return;
    openStream();
  }

  function startPolling() {
    setLive("poll");
    if (!live.poll) live.poll = setInterval(refresh, POLL_MS);
  }

  function openStream() {
    if (!state.token || !window.fetch || !window.ReadableStream || !window.AbortController) {
      startPolling();
      return;
    }
    var abort = new AbortController();
    live.abort = abort;
    startPolling(); // until the stream answers
    SB.streamEvents(url("v1/handoffs/events"), {
      token: state.token,
      signal: abort.signal,
      onOpen: function () {
        live.open = true;
        live.backoff = 1000;
        clearInterval(live.poll);
        live.poll = null;
        setLive("stream");
        refresh(); // what changed before the stream opened
      },
    }, function (name, data) {
      if (name !== "handoff") return;
      try { upsert(JSON.parse(data)); } catch (e) { return; }
      refresh(); // queue positions of the others
    }).then(reconnect, function (error) {
      if (abort.signal.aborted) return;
      if (error && error.status === 401) { signOut("Your token was not accepted. Please sign in again."); return; }
      reconnect();
    });

    function reconnect() {
      if (live.abort !== abort || abort.signal.aborted) return;
      live.open = false;
      live.abort = null;
      startPolling();
      var wait = live.backoff;
      live.backoff = Math.min(live.backoff * 2, 30000);
      setTimeout(function () { if (state.token && !live.abort) openStream(); }, wait);
    }
  }

  function stopLive() {
    if (live.abort) live.abort.abort();
    clearInterval(live.poll);
    live.abort = null;
    live.poll = null;
    live.open = false;
  }

  setInterval(function () { if (state.token) { renderInbox(); renderFactsAge(); } }, 30000);
  function renderFactsAge() { if (state.selected && !state.busy && document.activeElement === document.body) renderDetail(); }

  // ---------------------------------------------------------------------------------------
  // Start

  function resume() {
    signIn(state.token).catch(function (error) {
      if (error.status === 401 || !state.token) return;
      showError(error); // the server is unreachable: the token is kept, and tried again
      setTimeout(resume, 5000);
    });
  }
  if (state.token) {
    resume();
  } else {
    signOut(null);
  }
  document.body.setAttribute("data-ready", "true");
})();
