/*
 * Human Handoff notifications: a toast and (for newly flagged conversations) a chime whenever
 * a conversation needs attention, on every console page and every Django admin page.
 *
 * On the console page console.js owns the WebSocket and forwards frames through
 * window.HandoffNotify.handle(frame). Everywhere else this script opens its own socket to
 * /ws/console/ (or body[data-ws-url]) and reconnects with backoff.
 *
 * Text from customers and agents is only ever set with textContent.
 */
(function () {
  "use strict";

  if (window.HandoffNotify) return;

  var REASON_LABELS = {
    thumbs_down: "Thumbs Down",
    non_answer: "Non-Answer",
    negative_sentiment: "Negative Feedback",
    help_requested: "Help Requested",
    keyword: "Keyword",
    repeated_failures: "Repeated Failures",
    awaiting_human: "Waiting",
  };
  var MUTE_KEY = "handoff:muted";
  var MAX_TOASTS = 4;
  var TOAST_MS = 8000;
  var DEFAULT_WS = "/ws/console/";

  // Markup used when the page has no <template id="hh-toast-template"> (Django admin pages).
  // A constant: no data is ever interpolated into it.
  var TOAST_FALLBACK =
    '<div class="hh-toast" data-testid="hh-toast" role="group" aria-label="Conversation needs attention">' +
    '<div class="hh-toast__body"><p class="hh-toast__title"><span class="hh-toast__lead">Needs attention:</span> ' +
    '<span class="hh-toast__reasons" data-t="reasons"></span> <span class="hh-toast__service" data-t="service"></span></p>' +
    '<p class="hh-toast__preview" data-t="preview"></p><a class="hh-toast__view" data-t="view" href="/console/">View</a></div>' +
    '<button type="button" class="hh-toast__dismiss" data-t="dismiss" aria-label="Dismiss notification" title="Dismiss">\u00d7</button></div>';

  var serviceNames = {};
  var region = null;
  var live = null;
  var toastTemplate = null;
  var audioCtx = null;
  var muteButtons = [];
  var api = {
    reasonLabels: REASON_LABELS,
    labelFor: labelFor,
    handle: handle,
    toast: showToast,
    chime: chime,
    isMuted: isMuted,
    setMuted: setMuted,
    announce: announce,
    chimeCount: 0,
    toastCount: 0,
    socket: null,
  };
  window.HandoffNotify = api;

  function labelFor(reason) {
    return REASON_LABELS[reason] || String(reason || "").replace(/_/g, " ");
  }

  // ---- Frames ---------------------------------------------------------------------------

  /** Apply one server frame: attention → toast (+ chime); batch → each event; others teach names. */
  function handle(frame) {
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "batch":
        (frame.events || []).forEach(handle);
        break;
      case "snapshot":
        (frame.services || []).forEach(rememberService);
        break;
      case "service":
        rememberService(frame.service);
        break;
      case "attention":
        onAttention(frame);
        break;
      default:
        break;
    }
  }

  function rememberService(service) {
    if (service && service.slug) serviceNames[service.slug] = service.name || service.slug;
  }

  function onAttention(event) {
    var reasons = Array.isArray(event.reasons) ? event.reasons : [];
    var serviceName = serviceNames[event.service] || event.service || "";
    showToast({
      conversationId: event.conversation_id,
      reasons: reasons,
      service: serviceName,
      preview: event.preview || "",
    });
    var labels = reasons.map(labelFor).join(", ") || "Flagged";
    announce(
      "Needs attention: " + labels + (serviceName ? " \u2014 " + serviceName : "") +
        (event.preview ? ". " + event.preview : "")
    );
    if (event.new === true && !isMuted()) chime();
  }

  // ---- Toasts ---------------------------------------------------------------------------

  function ensureRegion() {
    if (region && document.body.contains(region)) return region;
    region = document.querySelector("[data-hh-toasts]");
    if (!region) {
      region = document.createElement("div");
      region.className = "hh-toasts";
      region.setAttribute("data-hh-toasts", "");
      region.setAttribute("aria-label", "Notifications");
      document.body.appendChild(region);
    }
    return region;
  }

  function toastFragment() {
    if (!toastTemplate) {
      toastTemplate = document.getElementById("hh-toast-template");
      if (!toastTemplate) {
        toastTemplate = document.createElement("template");
        toastTemplate.innerHTML = TOAST_FALLBACK; // constant markup, no data
      }
    }
    return toastTemplate.content.firstElementChild.cloneNode(true);
  }

  /** Show one toast: {conversationId, reasons[], service, preview}. Returns the element. */
  function showToast(opts) {
    var container = ensureRegion();
    var el = toastFragment();
    var reasons = opts.reasons || [];
    el.setAttribute("data-reason", reasons.join(" "));
    if (opts.conversationId) el.setAttribute("data-conversation-id", opts.conversationId);

    var reasonsBox = el.querySelector('[data-t="reasons"]');
    reasons.forEach(function (reason) {
      var badge = document.createElement("span");
      badge.className = "hh-badge";
      badge.setAttribute("data-reason", reason);
      badge.textContent = labelFor(reason);
      reasonsBox.appendChild(badge);
    });
    if (!reasons.length) reasonsBox.textContent = "Flagged";

    var service = el.querySelector('[data-t="service"]');
    service.textContent = opts.service ? "\u2014 " + opts.service : "";

    var preview = el.querySelector('[data-t="preview"]');
    preview.textContent = opts.preview || "";
    preview.hidden = !opts.preview;
    if (opts.preview) preview.title = opts.preview;

    var view = el.querySelector('[data-t="view"]');
    if (opts.conversationId) {
      view.href = "/console/#c=" + encodeURIComponent(opts.conversationId);
      view.addEventListener("click", function () {
        dismiss(el);
      });
    } else {
      view.hidden = true;
    }

    el.querySelector('[data-t="dismiss"]').addEventListener("click", function () {
      dismiss(el);
    });

    // Auto-dismiss, paused while the pointer or focus is on the toast.
    var remaining = TOAST_MS;
    var startedAt = 0;
    var timer = null;
    function start() {
      startedAt = Date.now();
      timer = window.setTimeout(function () {
        dismiss(el);
      }, remaining);
    }
    function pause() {
      if (timer === null) return;
      window.clearTimeout(timer);
      timer = null;
      remaining = Math.max(1500, remaining - (Date.now() - startedAt));
    }
    el.addEventListener("mouseenter", pause);
    el.addEventListener("focusin", pause);
    el.addEventListener("mouseleave", function () {
      if (timer === null && !el.contains(document.activeElement)) start();
    });
    el.addEventListener("focusout", function (ev) {
      if (timer === null && !el.contains(ev.relatedTarget)) start();
    });
    el._hhStop = function () {
      if (timer !== null) window.clearTimeout(timer);
      timer = null;
    };

    container.appendChild(el);
    var toasts = container.querySelectorAll('[data-testid="hh-toast"]:not([data-leaving])');
    for (var i = 0; i < toasts.length - MAX_TOASTS; i++) dismiss(toasts[i], true);
    start();
    api.toastCount += 1;
    return el;
  }

  function dismiss(el, immediate) {
    if (!el || el.hasAttribute("data-leaving")) return;
    if (el._hhStop) el._hhStop();
    el.setAttribute("data-leaving", "");
    var reduce = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    if (immediate || reduce) {
      el.remove();
      return;
    }
    el.classList.add("hh-toast--leaving");
    window.setTimeout(function () {
      el.remove();
    }, 180);
  }

  // ---- Screen readers -------------------------------------------------------------------

  function announce(text) {
    if (!live || !document.body.contains(live)) {
      live = document.createElement("div");
      live.className = "hh-sr-only";
      live.setAttribute("role", "status");
      live.setAttribute("aria-live", "polite");
      live.setAttribute("data-hh-notify-live", "");
      document.body.appendChild(live);
    }
    // Clear first so repeating the same words is announced again.
    live.textContent = "";
    window.setTimeout(function () {
      live.textContent = text;
    }, 60);
  }

  // ---- Sound ----------------------------------------------------------------------------

  function audio() {
    if (audioCtx) return audioCtx;
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    try {
      audioCtx = new Ctx();
    } catch (e) {
      audioCtx = null;
    }
    return audioCtx;
  }

  // Browsers keep audio suspended until a user gesture: unlock on the first click or key.
  function unlock() {
    var ctx = audio();
    if (ctx && ctx.state === "suspended") ctx.resume().catch(function () {});
    window.removeEventListener("pointerdown", unlock, true);
    window.removeEventListener("keydown", unlock, true);
  }

  /** Play the attention chime (counted, for tests). */
  function chime() {
    api.chimeCount += 1;
    playTones();
  }

  /** A short, soft two-tone chime made with the Web Audio API (no audio file). */
  function playTones() {
    var ctx = audio();
    if (!ctx) return;
    if (ctx.state === "suspended") ctx.resume().catch(function () {});
    var t0 = ctx.currentTime + 0.02;
    [
      [880, 0],
      [1318.5, 0.17],
    ].forEach(function (tone) {
      var osc = ctx.createOscillator();
      var gain = ctx.createGain();
      var at = t0 + tone[1];
      osc.type = "sine";
      osc.frequency.setValueAtTime(tone[0], at);
      gain.gain.setValueAtTime(0.0001, at);
      gain.gain.exponentialRampToValueAtTime(0.16, at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.5);
      osc.connect(gain);
      gain.connect(ctx.destination);
      osc.start(at);
      osc.stop(at + 0.55);
    });
  }

  // ---- Mute -----------------------------------------------------------------------------

  function isMuted() {
    try {
      return window.localStorage.getItem(MUTE_KEY) === "true";
    } catch (e) {
      return false;
    }
  }

  function setMuted(muted) {
    try {
      if (muted) window.localStorage.setItem(MUTE_KEY, "true");
      else window.localStorage.removeItem(MUTE_KEY);
    } catch (e) {
      /* private mode: the button still reflects the choice for this page */
    }
    paintMute(muted);
  }

  function paintMute(muted) {
    muteButtons.forEach(function (btn) {
      var label = muted ? "Unmute notification sound" : "Mute notification sound";
      if (btn.getAttribute("aria-pressed") !== String(muted)) btn.setAttribute("aria-pressed", String(muted));
      btn.setAttribute("aria-label", label);
      btn.title = label;
    });
  }

  function setupMute() {
    var buttons = Array.prototype.slice.call(document.querySelectorAll("[data-hh-mute]"));
    if (!buttons.length) {
      // Django admin: a small bell in the user tools, or a floating one if there is no header.
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "hh-mute-fallback";
      btn.setAttribute("data-hh-mute", "");
      btn.setAttribute("data-testid", "hh-mute");
      btn.setAttribute("aria-pressed", "false");
      btn.appendChild(bellIcon());
      var tools = document.getElementById("user-tools");
      if (tools) {
        tools.insertBefore(btn, tools.firstChild);
      } else {
        btn.classList.add("hh-mute-fallback--floating");
        document.body.appendChild(btn);
      }
      buttons = [btn];
    }
    muteButtons = buttons;
    buttons.forEach(function (btn) {
      btn.addEventListener("click", function () {
        var next = !isMuted();
        setMuted(next);
        announce(next ? "Notification sound muted" : "Notification sound on");
        if (!next) playTones(); // a preview, so the agent hears what they'll get
      });
    });
    paintMute(isMuted());
    // Another tab toggled it.
    window.addEventListener("storage", function (ev) {
      if (ev.key === MUTE_KEY) paintMute(isMuted());
    });
  }

  function bellIcon() {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", "16");
    svg.setAttribute("height", "16");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var bell = document.createElementNS(ns, "path");
    bell.setAttribute("d", "M12 3a6 6 0 0 0-6 6v3.6l-1.6 2.7A1 1 0 0 0 5.3 17h13.4a1 1 0 0 0 .9-1.7L18 12.6V9a6 6 0 0 0-6-6zm-2.5 15.5a2.5 2.5 0 0 0 5 0z");
    bell.setAttribute("fill", "currentColor");
    var slash = document.createElementNS(ns, "path");
    slash.setAttribute("d", "M4 4l16 16");
    slash.setAttribute("stroke", "currentColor");
    slash.setAttribute("stroke-width", "2.2");
    slash.setAttribute("stroke-linecap", "round");
    slash.setAttribute("class", "hh-mute-slash");
    svg.appendChild(bell);
    svg.appendChild(slash);
    return svg;
  }

  // ---- Own socket (pages other than the console) ----------------------------------------

  function openOwnSocket() {
    var path = (document.body && document.body.getAttribute("data-ws-url")) || DEFAULT_WS;
    var attempt = 0;
    var timer = null;
    var stopped = false;

    function url() {
      var u = new URL(path, window.location.href);
      u.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
      return u.toString();
    }

    function connect() {
      timer = null;
      var ws;
      try {
        ws = new WebSocket(url());
      } catch (e) {
        schedule();
        return;
      }
      api.socket = ws;
      ws.addEventListener("message", function (ev) {
        var frame;
        try {
          frame = JSON.parse(ev.data);
        } catch (e) {
          return;
        }
        if (frame && frame.type === "snapshot") attempt = 0;
        handle(frame);
      });
      ws.addEventListener("close", function (ev) {
        api.socket = null;
        // 4403: not an agent (or signed out). Don't hammer the server.
        if (ev.code === 4403) {
          stopped = true;
          return;
        }
        schedule();
      });
    }

    function schedule() {
      if (stopped || timer !== null) return;
      var base = Math.min(30000, 1000 * Math.pow(2, attempt));
      attempt += 1;
      timer = window.setTimeout(connect, base / 2 + Math.random() * (base / 2));
    }

    window.addEventListener("online", function () {
      if (!stopped && !api.socket && timer !== null) {
        window.clearTimeout(timer);
        connect();
      }
    });
    connect();
  }

  // ---- Start ----------------------------------------------------------------------------

  function init() {
    ensureRegion();
    setupMute();
    window.addEventListener("pointerdown", unlock, true);
    window.addEventListener("keydown", unlock, true);
    // The console page owns the socket and forwards frames to handle().
    if (!document.querySelector("[data-hh-console]")) openOwnSocket();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
