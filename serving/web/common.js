/* Shared by the chat widget and the agent console: request ids, JSON calls with retries,
   Server-Sent Events over fetch(), storage that survives a blocked sessionStorage, small DOM
   helpers. No dependencies; every URL is relative to the page's origin. */
"use strict";

var SB = (function () {
  var memory = {};

  /* sessionStorage, or memory where it is blocked (a third-party iframe with storage off). */
  var store = {
    get: function (key) {
      try { return window.sessionStorage.getItem(key); } catch (e) { return memory[key] || null; }
    },
    set: function (key, value) {
      try { window.sessionStorage.setItem(key, value); } catch (e) { memory[key] = value; }
    },
    remove: function (key) {
      try { window.sessionStorage.removeItem(key); } catch (e) { delete memory[key]; }
    },
  };

  /* A random id matching the API's [A-Za-z0-9._:-]+ (crypto.randomUUID needs a secure
     context; getRandomValues does not). */
  function newId(prefix) {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    var hex = "";
    for (var i = 0; i < bytes.length; i++) hex += (bytes[i] + 0x100).toString(16).slice(1);
    return (prefix || "") + hex;
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  /* Seconds from a Retry-After header (seconds or an HTTP date); `fallback` when absent. */
  function retryAfter(response, fallback) {
    var value = response.headers.get("Retry-After");
    if (!value) return fallback;
    var seconds = Number(value);
    if (!isNaN(seconds)) return Math.max(0, Math.min(seconds, 60));
    var date = Date.parse(value);
    return isNaN(date) ? fallback : Math.max(0, Math.min((date - Date.now()) / 1000, 60));
  }

  /* An API refusal: the HTTP status and the body's {"error": {"code", "message"}}. */
  function ApiError(status, code, message) {
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.message = message;
  }
  ApiError.prototype = Object.create(Error.prototype);

  function errorOf(status, body) {
    var error = (body && body.error) || {};
    if (typeof error === "string") error = { message: error };
    var code = error.code || (body && body.detail ? "invalid_request" : "http_" + status);
    var message = error.message || (body && typeof body.detail === "string" ? body.detail : "");
    if (!message && body && Array.isArray(body.detail)) {
      message = body.detail.map(function (d) { return d.msg || String(d); }).join("; ");
    }
    return new ApiError(status, code, message || "The server answered " + status + ".");
  }

  var RETRIED = [429, 502, 503, 504]; // busy, or a proxy that lost the replica

  /* A JSON call. Network errors, 429, 502, 503 and 504 are retried (the same body, so a mutating call
     keeps its request_id and is applied once); `opts.onWait(seconds, why)` hears each wait
     ("busy" or "offline") and `opts.onWait(0, null)` the end of waiting. Other statuses
     reject with an ApiError. */
  function api(method, url, body, opts) {
    opts = opts || {};
    var attempts = opts.attempts || 6;
    var headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (opts.token) headers.Authorization = "Bearer " + opts.token;
    if (opts.sessionToken) headers["X-Session-Token"] = opts.sessionToken;
    var init = { method: method, headers: headers, cache: "no-store", credentials: "same-origin" };
    if (body !== undefined) init.body = JSON.stringify(body);
    var wait = opts.onWait || function () {};

    function attempt(n) {
      return fetch(url, init).then(
        function (response) {
          if (RETRIED.indexOf(response.status) >= 0 && n < attempts) {
            var seconds = retryAfter(response, Math.min(2 * n, 10));
            wait(seconds, "busy");
            return sleep(seconds * 1000).then(function () { return attempt(n + 1); });
          }
          return response.text().then(function (text) {
            var parsed = null;
            try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
            wait(0, null);
            if (!response.ok) throw errorOf(response.status, parsed);
            return parsed;
          });
        },
        function (networkError) {
          if (n >= attempts) {
            wait(0, null);
            throw new ApiError(0, "network", "The connection failed. Please try again.");
          }
          var seconds = Math.min(Math.pow(2, n - 1), 8);
          wait(seconds, "offline");
          return sleep(seconds * 1000).then(function () { return attempt(n + 1); });
        }
      );
    }
    return attempt(1);
  }

  /* Server-Sent Events over fetch(), for streams that need headers EventSource cannot send.
     onEvent(name, data) for each event; resolves when the stream ends, rejects on an error
     (an ApiError for a non-2xx answer). `signal` aborts it. */
  function streamEvents(url, opts, onEvent) {
    var headers = { Accept: "text/event-stream" };
    if (opts.token) headers.Authorization = "Bearer " + opts.token;
    return fetch(url, { headers: headers, cache: "no-store", signal: opts.signal }).then(
      function (response) {
        if (!response.ok) {
          return response.text().then(function (text) {
            var parsed = null;
            try { parsed = JSON.parse(text); } catch (e) { parsed = null; }
            throw errorOf(response.status, parsed);
          });
        }
        if (!response.body || !response.body.getReader) throw new Error("no streaming");
        if (opts.onOpen) opts.onOpen();
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        function dispatch(block) {
          var name = "message";
          var data = [];
          block.split("\n").forEach(function (line) {
            if (!line || line.charAt(0) === ":") return;
            var colon = line.indexOf(":");
            var field = colon < 0 ? line : line.slice(0, colon);
            var value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") name = value;
            else if (field === "data") data.push(value);
          });
          if (data.length) onEvent(name, data.join("\n"));
        }
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) return;
            buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
            var end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              dispatch(buffer.slice(0, end));
              buffer = buffer.slice(end + 2);
            }
            return pump();
          });
        }
        return pump();
      }
    );
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "onclick") node.addEventListener("click", value);
      else node.setAttribute(key, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function age(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    return Math.floor(seconds / 86400) + " d";
  }

  return {
    store: store, newId: newId, sleep: sleep, api: api, ApiError: ApiError,
    streamEvents: streamEvents, el: el, age: age,
  };
})();
