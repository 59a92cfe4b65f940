// Human Handoff agent console: live cards over /ws/console/, actions over /api/v1/.
// Plain ES module, no build step, no dependencies. Every piece of customer or agent text is
// set with textContent; markup comes only from the <template> elements in console.html.

const body = document.body;
const root = document.querySelector("[data-hh-console]");

const cfg = {
  wsUrl: body.dataset.wsUrl || "/ws/console/",
  api: withSlash(body.dataset.api || "/api/v1/"),
  userId: String(body.dataset.userId || ""),
  isAdmin: body.dataset.isAdmin === "true",
};

const MODES = [
  ["ai_only", "AI Only"],
  ["human_supported", "Human-Supported AI"],
  ["human_only", "Human Only"],
];
const MODE_LABEL = Object.fromEntries(MODES);
const MODE_HINT = {
  ai_only: "The AI handles every conversation; agents can't take over.",
  human_supported: "The AI replies; agents can monitor, take over and receive escalations.",
  human_only: "The AI is off; customers wait for a person to reply.",
};
const STATUS_LABEL = { ai_active: "AI Active", paused: "Paused", closed: "Closed" };
const CONN = {
  connecting: ["Connecting", "Attempting to establish a connection."],
  connected: ["Connected", "Receiving live conversation updates."],
  disconnected: ["Disconnected", "The connection has been lost. The page will attempt to reconnect automatically."],
};
const ADMIN_ONLY = "Only admins can change modes";
const RESYNC_AFTER_HIDDEN_MS = 5000;

/** Everything the screen shows; exposed for tests as window.HandoffConsole.state. */
const state = {
  connection: "connecting",
  services: [], // [{slug, name, mode}] in server order
  cards: {}, // id -> CARD
  counters: { active: 0, needs_attention: 0, paused: 0 },
  watched: null, // id of the conversation open in the panel
  messages: {}, // seq -> MESSAGE of the watched conversation
  detail: null, // GET conversations/ID/ of the watched conversation
  closed: false, // the watched conversation has been closed
  transcriptReady: false,
  snapshots: 0,
};
window.HandoffConsole = { state, applyFrame, resync };

// ---- DOM ------------------------------------------------------------------------------

const $ = (sel, el = document) => el.querySelector(sel);
const P = (name) => dom.panel.querySelector(`[data-p="${name}"]`);

const dom = {
  conn: $('[data-testid="hh-conn"]'),
  connLabel: $("[data-conn-label]"),
  counters: {
    active: $('[data-counter="active"]'),
    needs_attention: $('[data-counter="needs_attention"]'),
    paused: $('[data-counter="paused"]'),
  },
  counterBoxes: {
    needs_attention: $('[data-counter-box="needs_attention"]'),
    paused: $('[data-counter-box="paused"]'),
  },
  services: $("[data-services]"),
  loading: $("[data-services-loading]"),
  empty: $("[data-services-empty]"),
  setAll: $("[data-setall]"),
  setAllGroup: $("[data-setall-group]"),
  pageError: $("[data-page-error]"),
  pageErrorText: $("[data-page-error-text]"),
  panel: $("#hh-panel"),
  live: $("[data-hh-live]"),
  tpl: {
    service: $("#hh-service-template"),
    card: $("#hh-card-template"),
    message: $("#hh-message-template"),
  },
};
dom.title = P("title");
dom.scroller = dom.panel.querySelector(".hh-transcript-wrap");
dom.transcript = P("transcript");
dom.takeOver = dom.panel.querySelector('[data-testid="hh-take-over"]');
dom.composer = P("composer");
dom.reply = dom.panel.querySelector('[data-testid="hh-reply"]');
dom.send = dom.panel.querySelector('[data-testid="hh-send"]');
dom.resume = dom.panel.querySelector('[data-testid="hh-resume"]');
dom.release = dom.panel.querySelector('[data-testid="hh-release"]');
dom.close = dom.panel.querySelector('[data-testid="hh-close"]');
dom.error = P("error");

const baseTitle = document.title;
const sectionEls = new Map(); // slug -> {section, name, count, modes, cards, empty}
const cardEls = new Map(); // id -> {li, el, f, reasonsKey}
const messageEls = new Map(); // seq -> li
const tombstones = new Set(); // ids removed since the last snapshot: ignore late card events
const dirtySections = new Set();
const pendingModes = new Set(); // slugs (or "*") with a mode change in flight
const drafts = new Map(); // conversation id -> unsent reply text
let countersSeen = false; // announce changes, not the first numbers

// ---- Small helpers --------------------------------------------------------------------

function withSlash(url) {
  return url.endsWith("/") ? url : `${url}/`;
}

function setText(el, value) {
  const text = value == null ? "" : String(value);
  if (el.textContent !== text) el.textContent = text;
}

function setAttr(el, name, value) {
  if (value == null || value === false) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
    return;
  }
  const text = String(value);
  if (el.getAttribute(name) !== text) el.setAttribute(name, text);
}

function setHidden(el, hidden) {
  if (el.hidden !== hidden) el.hidden = hidden;
}

function setDisabled(el, disabled) {
  if (el.disabled !== disabled) el.disabled = disabled;
}

function nameOf(value) {
  if (value == null) return "";
  if (typeof value === "object") return value.name || value.display_name || value.username || "";
  return String(value);
}

function timeOf(iso) {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(t) ? 0 : t;
}

function relativeTime(iso) {
  const t = timeOf(iso);
  if (!t) return "";
  const seconds = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (seconds < 45) return "just now";
  const minutes = Math.max(1, Math.floor(seconds / 60));
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.floor(hours / 24);
  return days === 1 ? "yesterday" : `${days} days ago`;
}

function absoluteTime(iso) {
  const t = timeOf(iso);
  return t ? new Date(t).toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : "";
}

function clockTime(iso) {
  const t = timeOf(iso);
  return t ? new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

function elapsed(iso) {
  const t = timeOf(iso);
  if (!t) return "";
  const total = Math.max(0, Math.floor((Date.now() - t) / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function formatLocation(loc) {
  if (!loc || typeof loc !== "object") return "";
  const { city, region, country } = loc;
  if (city && region) return `${city}, ${region}`;
  if (city && country) return `${city}, ${country}`;
  return city || region || country || "";
}

function labelFor(reason) {
  const labels = (window.HandoffNotify && window.HandoffNotify.reasonLabels) || {};
  return labels[reason] || String(reason).replace(/_/g, " ");
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function serviceBySlug(slug) {
  return state.services.find((s) => s.slug === slug) || null;
}

function isMine(card) {
  return Boolean(card && card.claimed_by && String(card.claimed_by.id) === cfg.userId);
}

let liveTimer = null;
function announce(text) {
  if (!dom.live) return;
  window.clearTimeout(liveTimer);
  dom.live.textContent = "";
  liveTimer = window.setTimeout(() => {
    dom.live.textContent = text;
  }, 50);
}

function forwardToNotify(frame) {
  if (window.HandoffNotify) window.HandoffNotify.handle(frame);
}

// ---- REST -----------------------------------------------------------------------------

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  if (match) return decodeURIComponent(match[1]);
  const meta = $('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

const STATUS_DETAIL = {
  0: "Can't reach the server. Check your connection and try again.",
  400: "The server couldn't accept that request.",
  401: "You're signed out. Reload the page to sign in again.",
  403: "You're not allowed to do that.",
  404: "This conversation no longer exists.",
  409: "Someone changed this conversation just now. Try again.",
  413: "That message is too long.",
  429: "Too many requests. Wait a moment and try again.",
};

/** Call the API; resolve to {ok, status, data, code, detail} and never throw. */
async function apiCall(method, path, payload) {
  const url = /^(https?:)?\//.test(path) ? path : cfg.api + path;
  const headers = { Accept: "application/json" };
  const init = { method, credentials: "same-origin", headers };
  if (method !== "GET") {
    headers["X-CSRFToken"] = csrfToken();
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload === undefined ? {} : payload);
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (err) {
    return { ok: false, status: 0, code: "network", detail: STATUS_DETAIL[0], data: null };
  }
  let data = null;
  try {
    const text = await resp.text();
    data = text ? JSON.parse(text) : null;
  } catch (err) {
    data = null;
  }
  if (resp.ok) return { ok: true, status: resp.status, data };
  let detail = data && typeof data.detail === "string" ? data.detail : "";
  if (!detail && data && typeof data === "object") {
    // DRF field errors: {"text": ["This field may not be blank."]}
    const first = Object.values(data).flat().find((v) => typeof v === "string");
    if (first) detail = first;
  }
  if (!detail) detail = STATUS_DETAIL[resp.status] || `The server had a problem (HTTP ${resp.status}). Try again.`;
  return { ok: false, status: resp.status, code: (data && data.code) || String(resp.status), detail, data };
}

/** Follow a "next" link on this origin only (an absolute URL may name another scheme behind a proxy). */
function samePath(url) {
  try {
    const u = new URL(url, window.location.href);
    return `${u.pathname}${u.search}`;
  } catch (err) {
    return null;
  }
}

// ---- Connection -----------------------------------------------------------------------

let ws = null;
let attempt = 0;
let retryTimer = null;
let hiddenAt = 0;
let sessionLost = false; // the server refused us (4403): say so until a socket is accepted

function wsUrl() {
  const url = new URL(cfg.wsUrl, window.location.href);
  url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

function setConnection(next) {
  state.connection = next;
  const [label, hint] = CONN[next];
  setAttr(dom.conn, "data-state", next);
  setAttr(dom.conn, "title", hint);
  setText(dom.connLabel, label);
  setAttr(root, "data-conn", next);
}

function connect() {
  window.clearTimeout(retryTimer);
  retryTimer = null;
  setConnection("connecting");
  let socket;
  try {
    socket = new WebSocket(wsUrl());
  } catch (err) {
    scheduleReconnect();
    return;
  }
  ws = socket;
  socket.addEventListener("open", () => {
    if (ws !== socket) return;
    setConnection("connected");
    if (sessionLost) {
      sessionLost = false;
      showPageError("");
    }
    syncWatch();
  });
  socket.addEventListener("message", (ev) => {
    if (ws !== socket) return;
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch (err) {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    if (frame.type === "snapshot") attempt = 0; // a healthy connection: reset the backoff
    applyFrame(frame);
  });
  socket.addEventListener("close", (ev) => {
    if (ws !== socket) return;
    ws = null;
    setConnection("disconnected");
    if (!state.snapshots) setText(dom.loading, "Waiting for the connection…");
    if (ev.code === 4403) {
      sessionLost = true;
      showPageError("Your session has ended or this account can't use the console. Reload the page to sign in again.", { sticky: true });
      scheduleReconnect(30000);
      return;
    }
    scheduleReconnect();
  });
}

/** Exponential backoff with jitter: ~0.5–1 s, 1–2 s, 2–4 s … capped at 30 s. */
function scheduleReconnect(minDelay = 0) {
  if (retryTimer !== null) return;
  const base = Math.min(30000, 1000 * 2 ** attempt);
  attempt += 1;
  const delay = Math.max(minDelay, base / 2 + Math.random() * (base / 2));
  retryTimer = window.setTimeout(connect, delay);
}

function reconnectNow() {
  if (ws) return;
  attempt = 0;
  connect();
}

function sendWs(frame) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function resync() {
  sendWs({ type: "resync" });
}

/** Make the socket watch exactly the conversation open in the panel. */
function syncWatch() {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const current = ws.hhWatching || null;
  if (current === state.watched) return;
  if (current) sendWs({ type: "unwatch", conversation_id: current });
  if (state.watched) sendWs({ type: "watch", conversation_id: state.watched });
  ws.hhWatching = state.watched;
  // A new socket missed whatever was said while we were away: fill the gap over REST.
  if (state.watched && state.transcriptReady) loadMessages(state.watched, openToken, maxSeq());
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") {
    hiddenAt = Date.now();
    return;
  }
  if (!ws) reconnectNow();
  else if (hiddenAt && Date.now() - hiddenAt > RESYNC_AFTER_HIDDEN_MS) resync();
  hiddenAt = 0;
});
window.addEventListener("online", reconnectNow);

// ---- Applying server frames -----------------------------------------------------------

/** Apply one frame (a batch is applied event by event, in order), then fix card order. */
function applyFrame(frame) {
  applyEvent(frame);
  flushOrder();
}

function applyEvent(ev) {
  if (!ev || typeof ev !== "object") return;
  switch (ev.type) {
    case "snapshot":
      applySnapshot(ev);
      break;
    case "batch":
      (ev.events || []).forEach(applyEvent);
      break;
    case "card":
      applyCard(ev.card);
      break;
    case "card_removed":
      removeCard(ev.id);
      break;
    case "counters":
      applyCounters(ev.counters);
      break;
    case "service":
      applyService(ev.service);
      forwardToNotify(ev);
      break;
    case "attention":
      forwardToNotify(ev);
      break;
    case "message":
      onMessage(ev);
      break;
    case "error":
      console.warn("Console socket error:", ev.code, ev.detail);
      break;
    default:
      break;
  }
}

function applySnapshot(snap) {
  state.snapshots += 1;
  tombstones.clear();
  const services = Array.isArray(snap.services) ? snap.services : [];
  state.services = services.map((s) => ({ slug: s.slug, name: s.name || s.slug, mode: s.mode }));

  const seen = new Set();
  for (const svc of services) {
    for (const raw of svc.conversations || []) {
      const card = raw.service ? raw : { ...raw, service: svc.slug };
      seen.add(card.id);
      const prev = state.cards[card.id];
      // A card event that overtook the snapshot may already be newer: keep it.
      if (prev && typeof prev.version === "number" && prev.version > card.version) continue;
      if (prev && prev.version === card.version && prev.service === card.service) continue;
      setCard(card, prev);
    }
  }
  for (const id of Object.keys(state.cards)) {
    if (!seen.has(id)) removeCard(id, { tombstone: false });
  }
  renderServices(); // after the cards, so sections of vanished services can go
  // Whatever the old socket watched, the snapshot is now the truth.
  if (state.watched && !seen.has(state.watched) && !state.closed && state.detail) markClosed();

  applyCounters(snap.counters);
  forwardToNotify(snap);
  setHidden(dom.loading, true);
  setHidden(dom.empty, state.services.length > 0);
  setAttr(dom.services, "aria-busy", "false");
  syncWatch();
  if (state.watched) {
    renderPanel();
    fillFromCard();
  }
}

function applyCard(card) {
  if (!card || !card.id || tombstones.has(card.id)) return;
  const prev = state.cards[card.id];
  if (prev && typeof prev.version === "number" && typeof card.version === "number" && card.version <= prev.version) {
    return;
  }
  if (card.service && !serviceBySlug(card.service)) resync(); // a service we've never heard of: we missed something
  setCard(card, prev);
}

function setCard(card, prev) {
  state.cards[card.id] = card;
  paintCard(card);
  dirtySections.add(card.service);
  if (prev && prev.service !== card.service) dirtySections.add(prev.service);
  if (card.id === state.watched) {
    renderPanelHeader();
    renderPanel();
    // Flags were raised or acknowledged: refresh the panel's flag list.
    if (prev && (prev.reasons || []).join() !== (card.reasons || []).join()) refreshDetailSoon();
  }
}

let detailTimer = null;
function refreshDetailSoon() {
  window.clearTimeout(detailTimer);
  const id = state.watched;
  const token = openToken;
  detailTimer = window.setTimeout(() => {
    if (state.watched === id && token === openToken && !state.closed) loadDetail(id, token);
  }, 400);
}

function removeCard(id, { tombstone = true } = {}) {
  if (!id) return;
  const prev = state.cards[id];
  delete state.cards[id];
  if (tombstone) tombstones.add(id);
  const view = cardEls.get(id);
  if (view) {
    // Keep keyboard users in the list when the focused card disappears.
    if (view.el === document.activeElement) {
      const next = view.li.nextElementSibling || view.li.previousElementSibling;
      view.li.remove();
      if (next) next.querySelector(".hh-card").focus({ preventScroll: true });
    } else {
      view.li.remove();
    }
    cardEls.delete(id);
  }
  if (prev) dirtySections.add(prev.service);
  if (id === state.watched) markClosed();
}

function applyCounters(counters) {
  if (!counters || typeof counters !== "object") return;
  for (const key of ["active", "needs_attention", "paused"]) {
    const value = counters[key];
    if (typeof value !== "number") continue;
    const before = state.counters[key];
    state.counters[key] = value;
    setText(dom.counters[key], value);
    if (dom.counterBoxes[key]) setAttr(dom.counterBoxes[key], "data-nonzero", String(value > 0));
    if (key === "needs_attention" && before !== value) {
      if (countersSeen) {
        announce(value === 0 ? "No conversations need attention" : `${plural(value, "conversation needs", "conversations need")} attention`);
      }
      const title = value > 0 ? `(${value}) ${baseTitle}` : baseTitle;
      if (document.title !== title) document.title = title;
    }
  }
  countersSeen = true;
}

function applyService(service) {
  if (!service || !service.slug) return;
  const existing = serviceBySlug(service.slug);
  if (existing) Object.assign(existing, service);
  else state.services.push({ slug: service.slug, name: service.name || service.slug, mode: service.mode });
  renderServices();
  if (state.watched) renderPanel();
}

// ---- Services and cards ---------------------------------------------------------------

function sectionFor(slug) {
  let view = sectionEls.get(slug);
  if (view) return view;
  const section = dom.tpl.service.content.firstElementChild.cloneNode(true);
  section.dataset.slug = slug;
  view = {
    section,
    name: section.querySelector('[data-s="name"]'),
    count: section.querySelector('[data-s="count"]'),
    modes: section.querySelector('[data-s="modes"]'),
    cards: section.querySelector('[data-s="cards"]'),
    empty: section.querySelector('[data-s="empty"]'),
  };
  const titleId = `hh-service-${slug}`;
  view.name.id = titleId;
  view.cards.setAttribute("aria-labelledby", titleId);
  setText(view.name, slug);
  paintModeButtons(view.modes, null, { pending: false, allowed: cfg.isAdmin });
  sectionEls.set(slug, view);
  dom.services.appendChild(section);
  return view;
}

function paintModeButtons(group, mode, { pending, allowed }) {
  setAttr(group, "aria-busy", pending ? "true" : "false");
  for (const btn of group.querySelectorAll("[data-mode]")) {
    const m = btn.dataset.mode;
    setAttr(btn, "aria-pressed", String(m === mode));
    setDisabled(btn, !allowed || pending);
    setAttr(btn, "title", allowed ? MODE_HINT[m] : ADMIN_ONLY);
  }
  setAttr(group, "title", allowed ? null : ADMIN_ONLY);
  setAttr(group, "data-readonly", allowed ? null : "true");
}

function renderServices() {
  const known = new Set();
  let anchor = null;
  for (const svc of state.services) {
    known.add(svc.slug);
    const view = sectionFor(svc.slug);
    setText(view.name, svc.name);
    setAttr(view.modes, "aria-label", `Mode for ${svc.name}`);
    setAttr(view.section, "data-mode", svc.mode);
    paintModeButtons(view.modes, svc.mode, { pending: pendingModes.has(svc.slug) || pendingModes.has("*"), allowed: cfg.isAdmin });
    // Keep sections in server order.
    const expected = anchor ? anchor.nextElementSibling : dom.services.querySelector(".hh-service");
    if (expected !== view.section) dom.services.insertBefore(view.section, expected);
    anchor = view.section;
    dirtySections.add(svc.slug);
  }
  // Sections of services that no longer exist go, unless cards still point at them.
  for (const [slug, view] of sectionEls) {
    if (known.has(slug)) continue;
    if (Object.values(state.cards).some((c) => c.service === slug)) continue;
    view.section.remove();
    sectionEls.delete(slug);
  }
  // "Set all services": only with several services.
  setHidden(dom.setAll, state.services.length < 2);
  const modes = new Set(state.services.map((s) => s.mode));
  const common = modes.size === 1 ? [...modes][0] : null;
  paintModeButtons(dom.setAllGroup, common, { pending: pendingModes.size > 0, allowed: cfg.isAdmin });
}

function cardView(id) {
  let view = cardEls.get(id);
  if (view) return view;
  const li = dom.tpl.card.content.firstElementChild.cloneNode(true);
  const el = li.querySelector('[data-testid="hh-card"]');
  const f = {};
  for (const node of el.querySelectorAll("[data-f]")) f[node.dataset.f] = node;
  el.dataset.id = id;
  view = { li, el, f, reasonsKey: null };
  cardEls.set(id, view);
  return view;
}

function paintCard(card) {
  const view = cardView(card.id);
  const { el, f } = view;
  const mine = isMine(card);

  setAttr(el, "data-needs-attention", String(Boolean(card.needs_attention)));
  setAttr(el, "data-status", card.status);
  setAttr(el, "data-waiting", String(Boolean(card.waiting_since)));
  setAttr(el, "data-mine", mine ? "true" : null);
  setAttr(el, "aria-current", card.id === state.watched ? "true" : null);

  setText(f.status, STATUS_LABEL[card.status] || card.status);
  setAttr(f.status, "data-status", card.status);

  const specialist = nameOf(card.specialist);
  setText(f.specialist, specialist);
  setHidden(f.specialist, !specialist);

  const claimer = card.claimed_by ? (mine ? "you" : nameOf(card.claimed_by)) : "";
  setText(f.claimed, claimer ? `Claimed by ${claimer}` : "");
  setHidden(f.claimed, !claimer);

  setText(f.question, card.opening_question || "No message yet");
  setAttr(f.question, "title", card.opening_question || null);

  const location = formatLocation(card.location);
  setText(f.location, location || "Unknown location");
  setAttr(f.location, "data-empty", location ? null : "true");

  setText(f.started, relativeTime(card.started_at));
  setAttr(f.started, "datetime", card.started_at || null);
  setAttr(f.started, "title", card.started_at ? `Started ${absoluteTime(card.started_at)}` : null);

  const count = Number(card.message_count) || 0;
  setText(f.count, plural(count, "message", "messages"));

  const reasons = Array.isArray(card.reasons) ? card.reasons : [];
  const key = reasons.join(" ");
  if (view.reasonsKey !== key) {
    view.reasonsKey = key;
    const badges = reasons.map((reason) => {
      const badge = document.createElement("span");
      badge.className = "hh-badge";
      badge.dataset.testid = "hh-badge";
      badge.dataset.reason = reason;
      badge.textContent = labelFor(reason);
      return badge;
    });
    f.badges.replaceChildren(...badges);
  }
  paintWaiting(view, card);
  return view;
}

function paintWaiting(view, card) {
  const waiting = Boolean(card.waiting_since);
  setHidden(view.f.waiting, !waiting);
  if (waiting) {
    setText(view.f.waiting, `Waiting ${elapsed(card.waiting_since)}`);
    setAttr(view.f.waiting, "title", `Waiting for a person since ${absoluteTime(card.waiting_since)}`);
  }
}

/** Needs attention first, then waiting (longest first), then most recent activity. */
function compareCards(a, b) {
  return (
    Number(Boolean(b.needs_attention)) - Number(Boolean(a.needs_attention)) ||
    Number(Boolean(b.waiting_since)) - Number(Boolean(a.waiting_since)) ||
    timeOf(b.last_activity_at) - timeOf(a.last_activity_at) ||
    timeOf(b.started_at) - timeOf(a.started_at) ||
    (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  );
}

/** Put each changed section's cards in order, moving only the ones out of place. */
function flushOrder() {
  if (!dirtySections.size) return;
  const focused = document.activeElement;
  const byService = new Map();
  for (const card of Object.values(state.cards)) {
    if (!dirtySections.has(card.service)) continue;
    if (!byService.has(card.service)) byService.set(card.service, []);
    byService.get(card.service).push(card);
  }
  for (const slug of dirtySections) {
    if (slug == null) continue;
    const cards = (byService.get(slug) || []).sort(compareCards);
    if (!cards.length && !sectionEls.has(slug)) continue;
    const view = sectionFor(slug);
    const list = view.cards;
    cards.forEach((card, i) => {
      const li = cardView(card.id).li;
      const at = list.children[i] || null;
      if (at !== li) list.insertBefore(li, at);
    });
    while (list.children.length > cards.length) list.lastElementChild.remove();
    setText(view.count, cards.length);
    setAttr(view.count, "aria-label", plural(cards.length, "active conversation", "active conversations"));
    setHidden(view.empty, cards.length > 0);
  }
  dirtySections.clear();
  // Moving a focused node blurs it: give focus back.
  if (focused && focused !== document.activeElement && document.body.contains(focused)) {
    focused.focus({ preventScroll: true });
  }
}

// ---- Panel ----------------------------------------------------------------------------

let openToken = 0;
let opener = null;
let busy = false;
let sending = false;
let loadingToken = null; // the panel opening whose transcript is being fetched
let gapWanted = null;
let detailCard = null;

function currentCard() {
  const live = state.cards[state.watched];
  if (live) return live;
  return detailCard;
}

function openConversation(id, { focus = true } = {}) {
  if (!id) return;
  if (state.watched === id && !dom.panel.hidden) {
    if (focus) dom.title.focus();
    return;
  }
  saveDraft();
  if (!state.watched) opener = document.activeElement;
  const previous = state.watched;
  state.watched = id;
  state.messages = {};
  state.detail = null;
  state.closed = false;
  state.transcriptReady = false;
  detailCard = null;
  busy = false;
  sending = false;
  openToken += 1;
  messageEls.clear();
  dom.transcript.replaceChildren();
  showTranscriptState("Loading transcript…");
  clearPanelError();
  dom.reply.value = drafts.get(id) || "";
  P("flags-box").open = false;
  P("profile-box").open = false;

  for (const cid of [previous, id]) {
    const card = cid && state.cards[cid];
    if (card) paintCard(card);
  }
  setHidden(dom.panel, false);
  setAttr(root, "data-panel", "open");
  body.classList.add("hh-panel-open");
  if (window.location.hash !== `#c=${id}`) {
    window.history.replaceState(null, "", `${window.location.pathname}${window.location.search}#c=${encodeURIComponent(id)}`);
  }
  renderInfo();
  renderPanelHeader();
  renderPanel();
  syncWatch();
  const token = openToken;
  loadDetail(id, token);
  loadMessages(id, token, 0);
  if (focus) dom.title.focus();
}

function hidePanel() {
  if (!state.watched) return;
  saveDraft();
  const id = state.watched;
  state.watched = null;
  openToken += 1;
  syncWatch();
  setHidden(dom.panel, true);
  setAttr(root, "data-panel", "closed");
  body.classList.remove("hh-panel-open");
  if (window.location.hash) window.history.replaceState(null, "", `${window.location.pathname}${window.location.search}`);
  const card = state.cards[id];
  if (card) paintCard(card);
  const view = cardEls.get(id);
  const target = view ? view.el : opener && document.body.contains(opener) ? opener : $(".hh-title");
  if (target) {
    if (!target.hasAttribute("tabindex") && !/^(A|BUTTON|INPUT|TEXTAREA|SELECT)$/.test(target.tagName)) {
      target.setAttribute("tabindex", "-1");
    }
    target.focus();
  }
  opener = null;
}

function saveDraft() {
  if (!state.watched) return;
  if (dom.reply.value) drafts.set(state.watched, dom.reply.value);
  else drafts.delete(state.watched);
}

function markClosed() {
  if (state.closed) return;
  state.closed = true;
  drafts.delete(state.watched);
  renderPanelHeader();
  renderPanel();
  announce("This conversation was closed");
}

async function loadDetail(id, token) {
  const res = await apiCall("GET", `conversations/${encodeURIComponent(id)}/`);
  if (token !== openToken) return;
  if (!res.ok) {
    if (res.status === 404 && !state.cards[id]) {
      showPanelError("This conversation doesn't exist or is no longer available.");
      state.closed = true;
    } else {
      showPanelError(res.detail);
    }
    renderPanelHeader();
    renderPanel();
    return;
  }
  const data = res.data || {};
  state.detail = data;
  detailCard = data.card && typeof data.card === "object" ? data.card : data;
  if (data.status === "closed" || data.conversation_status === "closed" || data.closed_at) state.closed = true;
  else if (state.snapshots && !state.cards[id] && !state.closed) state.closed = true; // not live: it was closed
  renderInfo();
  renderPanelHeader();
  renderPanel();
  // Names in the transcript may depend on the visitor's name.
  for (const m of Object.values(state.messages)) paintMessage(m);
}

async function loadMessages(id, token, afterSeq) {
  if (token !== openToken) return;
  if (loadingToken === token) {
    gapWanted = gapWanted === null ? afterSeq : Math.min(gapWanted, afterSeq);
    return;
  }
  loadingToken = token;
  gapWanted = null;
  const before = Object.keys(state.messages).length;
  let url = `conversations/${encodeURIComponent(id)}/messages/${afterSeq ? `?after_seq=${afterSeq}` : ""}`;
  let pages = 0;
  let failed = null;
  try {
    while (url && pages < 100) {
      const res = await apiCall("GET", url);
      if (token !== openToken) return;
      if (!res.ok) {
        failed = res.detail;
        break;
      }
      const data = res.data;
      const list = Array.isArray(data) ? data : data && Array.isArray(data.results) ? data.results : [];
      list.forEach(upsertMessage);
      const next = !Array.isArray(data) && data ? data.next : null;
      url = next ? samePath(next) : null;
      pages += 1;
    }
  } finally {
    if (loadingToken === token) loadingToken = null;
  }
  if (token !== openToken) return;
  const firstLoad = !state.transcriptReady;
  state.transcriptReady = true;
  if (failed && !Object.keys(state.messages).length) showTranscriptState(`Couldn't load the transcript. ${failed}`);
  else showTranscriptState(Object.keys(state.messages).length ? "" : "No messages yet.");
  if (firstLoad) scrollToEnd();
  const progressed = Object.keys(state.messages).length > before;
  const wanted = gapWanted;
  gapWanted = null;
  if (wanted !== null) loadMessages(id, token, wanted);
  else if (progressed) checkGap();
}

function maxSeq() {
  let max = 0;
  for (const key of Object.keys(state.messages)) max = Math.max(max, Number(key));
  return max;
}

/** A snapshot may show the open conversation further on than its transcript (its last
 * lines lost with a batch the server dropped under load): fetch what is missing. */
function fillFromCard() {
  const card = state.cards[state.watched];
  if (!card || !state.transcriptReady) return;
  if (Number(card.message_count) > maxSeq()) loadMessages(state.watched, openToken, maxSeq());
  else checkGap();
}

/** If a seq is missing, fetch everything after the last contiguous one. */
function checkGap() {
  if (!state.watched || !state.transcriptReady) return;
  const seqs = Object.keys(state.messages).map(Number).sort((a, b) => a - b);
  let expected = 1;
  for (const seq of seqs) {
    if (seq !== expected) {
      loadMessages(state.watched, openToken, expected - 1);
      return;
    }
    expected += 1;
  }
}

function onMessage(ev) {
  if (!ev.conversation_id || ev.conversation_id !== state.watched) return;
  const message = ev.message;
  if (!message || typeof message.seq !== "number") return;
  const before = maxSeq();
  upsertMessage(message);
  if (state.transcriptReady && message.seq > before + 1) checkGap();
}

function showTranscriptState(text) {
  const el = P("transcript-state");
  setText(el, text);
  setHidden(el, !text);
}

function nearEnd() {
  const s = dom.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 96;
}

function scrollToEnd() {
  dom.scroller.scrollTop = dom.scroller.scrollHeight;
}

function upsertMessage(message) {
  if (!message || typeof message.seq !== "number") return;
  const stick = nearEnd();
  const merged = { ...(state.messages[message.seq] || {}), ...message };
  state.messages[message.seq] = merged;
  paintMessage(merged);
  showTranscriptState("");
  if (stick || !state.transcriptReady) scrollToEnd();
}

function visitorName() {
  const visitor = state.detail && state.detail.visitor;
  return (visitor && visitor.name) || "";
}

function paintMessage(m) {
  let li = messageEls.get(m.seq);
  if (!li) {
    li = dom.tpl.message.content.firstElementChild.cloneNode(true);
    li.dataset.seq = String(m.seq);
    messageEls.set(m.seq, li);
    // Insert by seq: almost always at the end.
    let after = dom.transcript.lastElementChild;
    while (after && Number(after.dataset.seq) > m.seq) after = after.previousElementSibling;
    dom.transcript.insertBefore(li, after ? after.nextElementSibling : dom.transcript.firstElementChild);
  }
  const role = m.role || "system";
  setAttr(li, "data-role", role);
  setAttr(li, "class", `hh-msg hh-msg--${role}`);

  let who = "";
  if (role === "user") who = visitorName() || "Customer";
  else if (role === "ai") who = nameOf(m.specialist) ? `AI · ${nameOf(m.specialist)}` : "AI";
  else if (role === "human") who = nameOf(m.author) || "Agent";
  else who = "System";
  setText(li.querySelector('[data-m="who"]'), who);

  const time = li.querySelector('[data-m="time"]');
  setText(time, clockTime(m.created_at));
  setAttr(time, "datetime", m.created_at || null);
  setAttr(time, "title", absoluteTime(m.created_at) || null);

  setText(li.querySelector('[data-m="text"]'), m.text);

  const notes = [];
  if (m.feedback === "down") notes.push(["down", "Rated thumbs down"]);
  if (m.feedback === "up") notes.push(["up", "Rated thumbs up"]);
  if (m.non_answer === true) notes.push(["non_answer", "Non-answer"]);
  if (typeof m.sentiment === "number" && m.sentiment <= -0.5) notes.push(["sentiment", `Negative sentiment (${m.sentiment.toFixed(2)})`]);
  const notesEl = li.querySelector('[data-m="notes"]');
  const key = notes.map((n) => n[1]).join("|");
  if (notesEl.dataset.key !== key) {
    notesEl.dataset.key = key;
    notesEl.replaceChildren(
      ...notes.map(([kind, text]) => {
        const span = document.createElement("span");
        span.className = "hh-note-chip";
        span.dataset.kind = kind;
        span.textContent = text;
        return span;
      }),
    );
  }
  setHidden(notesEl, notes.length === 0);
}

function renderPanelHeader() {
  const card = currentCard();
  const status = P("status");
  const statusKey = state.closed ? "closed" : card ? card.status : null;
  setText(status, statusKey ? STATUS_LABEL[statusKey] || statusKey : "");
  setAttr(status, "data-status", statusKey);
  setHidden(status, !statusKey);

  const specialist = P("specialist");
  const name = card ? nameOf(card.specialist) : "";
  setText(specialist, name);
  setHidden(specialist, !name);

  const svc = card ? serviceBySlug(card.service) : null;
  const serviceLabel = svc ? `${svc.name} · ${MODE_LABEL[svc.mode] || svc.mode}` : card ? card.service : "";
  setText(P("service"), serviceLabel);
}

function renderInfo() {
  const detail = state.detail || {};
  const visitor = detail.visitor || {};
  const card = currentCard();
  const city = (visitor.location && visitor.location.city) || (card && card.location && card.location.city);
  setText(dom.title, visitor.name || (!state.detail ? "Conversation" : city ? `Visitor from ${city}` : "Anonymous visitor"));

  const email = P("email");
  setHidden(P("email-row"), !visitor.email);
  setText(email, visitor.email || "");
  // Only a mailto: link, so no other scheme can sneak in.
  setAttr(email, "href", visitor.email ? `mailto:${visitor.email}` : "#");

  const loc = formatLocation(visitor.location) || formatLocation(detail.location) || formatLocation(card && card.location);
  setText(P("location"), loc || "Unknown");

  const started = P("started");
  const startedAt = (card && card.started_at) || detail.started_at;
  setText(started, startedAt ? `${relativeTime(startedAt)} · ${clockTime(startedAt)}` : "—");
  setAttr(started, "datetime", startedAt || null);
  setAttr(started, "title", absoluteTime(startedAt) || null);

  // Free-form profile from the host page.
  const profile = visitor.profile && typeof visitor.profile === "object" ? Object.entries(visitor.profile) : [];
  setHidden(P("profile-box"), profile.length === 0);
  setText(P("profile-count"), profile.length);
  P("profile").replaceChildren(
    ...profile.slice(0, 20).map(([k, v]) => {
      const row = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v !== null && typeof v === "object" ? JSON.stringify(v) : String(v);
      row.append(dt, dd);
      return row;
    }),
  );

  const flags = Array.isArray(detail.flags) ? detail.flags : [];
  const box = P("flags-box");
  setHidden(box, flags.length === 0);
  const open = flags.filter((fl) => !isAcknowledged(fl));
  setText(P("flags-count"), flags.length);
  // The summary line shows which flags are still open; details (evidence) on demand.
  const openReasons = [...new Set(open.map((fl) => fl.reason))];
  P("flags-open").replaceChildren(
    ...openReasons.map((reason) => {
      const badge = document.createElement("span");
      badge.className = "hh-badge";
      badge.dataset.reason = reason;
      badge.textContent = labelFor(reason);
      return badge;
    }),
  );
  setAttr(box, "data-open-flags", String(open.length));
  P("flags").replaceChildren(...flags.map(flagItem));
}

function isAcknowledged(flag) {
  return Boolean(flag.acknowledged_at) || flag.acknowledged === true;
}

function flagItem(flag) {
  const li = document.createElement("li");
  li.className = "hh-flag";
  if (isAcknowledged(flag)) li.dataset.acknowledged = "true";
  const badge = document.createElement("span");
  badge.className = "hh-badge";
  badge.dataset.reason = flag.reason;
  badge.textContent = flag.label || labelFor(flag.reason);
  const when = document.createElement("time");
  when.className = "hh-flag__time";
  when.dateTime = flag.created_at || "";
  when.title = absoluteTime(flag.created_at);
  when.textContent = relativeTime(flag.created_at);
  li.append(badge, when);
  const evidence = formatEvidence(flag.evidence);
  if (evidence) {
    const p = document.createElement("p");
    p.className = "hh-flag__evidence";
    p.textContent = evidence;
    li.append(p);
  }
  if (isAcknowledged(flag)) {
    const ack = document.createElement("span");
    ack.className = "hh-flag__ack";
    ack.textContent = "Acknowledged";
    if (flag.acknowledged_at) ack.title = absoluteTime(flag.acknowledged_at);
    li.append(ack);
  }
  return li;
}

function formatEvidence(evidence) {
  if (evidence == null || evidence === "") return "";
  if (typeof evidence !== "object") return String(evidence);
  return Object.entries(evidence)
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${k.replace(/_/g, " ")}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" · ");
}

/** Show exactly the controls this agent may use on this conversation right now. */
function renderPanel() {
  if (!state.watched) return;
  const card = currentCard();
  const svc = card ? serviceBySlug(card.service) : null;
  const mode = svc ? svc.mode : state.detail ? state.detail.mode : null;
  const claimer = card ? card.claimed_by : null;
  const mine = isMine(card);
  const other = Boolean(claimer) && !mine;
  const closed = state.closed;
  const known = Boolean(card) && !closed;

  setHidden(P("closed"), !closed);
  setAttr(dom.panel, "data-closed", closed ? "true" : null);

  setHidden(P("banner"), !(known && other));
  setText(P("banner-name"), other ? nameOf(claimer) : "");

  const aiOnly = known && !claimer && mode === "ai_only";
  const note = P("note");
  setText(note, aiOnly ? "Agents can't take over in AI Only mode" : "");
  setHidden(note, !aiOnly);

  setHidden(dom.takeOver, !known || mine);
  setDisabled(dom.takeOver, !known || other || aiOnly || busy);
  setAttr(dom.takeOver, "title", other ? `${nameOf(claimer)} is handling this conversation` : aiOnly ? "Agents can't take over in AI Only mode" : null);

  setHidden(dom.composer, !(known && mine));
  setDisabled(dom.send, busy || sending);
  dom.reply.readOnly = sending;
  setAttr(dom.composer, "aria-busy", sending ? "true" : "false");

  const canResume = known && (mine || (cfg.isAdmin && (Boolean(claimer) || card.status === "paused")));
  const canRelease = known && Boolean(claimer) && (mine || cfg.isAdmin);
  const canClose = known && (mine || cfg.isAdmin);
  setHidden(dom.resume, !canResume);
  setHidden(dom.release, !canRelease);
  setHidden(dom.close, !canClose);
  for (const btn of [dom.resume, dom.release, dom.close]) setDisabled(btn, busy);
  setHidden(P("actions"), !(canResume || canRelease || canClose));
  setAttr(dom.panel, "aria-busy", busy ? "true" : "false");
  syncFoot();
}

/** A closed conversation has no controls: hide the footer unless it carries an error. */
function syncFoot() {
  setHidden(P("foot"), Boolean(state.closed) && dom.error.hidden);
}

function showPanelError(detail) {
  setText(dom.error, detail);
  setHidden(dom.error, !detail);
  syncFoot();
}

function clearPanelError() {
  showPanelError("");
}

const ACTIONS = {
  "take-over": "take-over",
  "resume-ai": "resume-ai",
  release: "release",
  close: "close",
};

async function runAction(action) {
  const id = state.watched;
  if (!id || busy || !ACTIONS[action]) return;
  if (action === "close" && !window.confirm("Close this conversation? The customer will see that the chat has ended.")) return;
  busy = true;
  clearPanelError();
  renderPanel();
  const res = await apiCall("POST", `conversations/${encodeURIComponent(id)}/${ACTIONS[action]}/`, {});
  busy = false;
  if (state.watched !== id) return;
  if (!res.ok) {
    showPanelError(res.detail);
    if (res.code === "closed") markClosed();
    renderPanel();
    return;
  }
  if (action === "close") {
    removeCard(id);
    flushOrder();
    markClosed();
    return;
  }
  const card = res.data && res.data.card && typeof res.data.card === "object" ? res.data.card : res.data;
  if (card && card.id) {
    if (state.cards[card.id]) applyCard(card);
    else if (!tombstones.has(card.id)) setCard(card, null);
    if (!state.cards[card.id]) detailCard = card;
    flushOrder();
  }
  renderPanelHeader();
  renderPanel();
  if (action === "take-over") {
    announce("You have taken over this conversation");
    if (!dom.composer.hidden) dom.reply.focus();
  } else {
    announce(action === "release" ? "Conversation released" : "The AI has resumed");
    dom.title.focus();
  }
}

async function sendReply() {
  const id = state.watched;
  if (!id || sending) return;
  const text = dom.reply.value;
  if (!text.trim()) {
    showPanelError("Type a message first.");
    dom.reply.focus();
    return;
  }
  sending = true;
  clearPanelError();
  renderPanel();
  const res = await apiCall("POST", `conversations/${encodeURIComponent(id)}/messages/`, { text });
  sending = false;
  if (state.watched !== id) {
    if (res.ok) drafts.delete(id);
    return;
  }
  renderPanel();
  if (!res.ok) {
    showPanelError(res.detail);
    dom.reply.focus();
    return;
  }
  // Only now is the text safely stored: clear the box.
  dom.reply.value = "";
  drafts.delete(id);
  const message = res.data && res.data.message && typeof res.data.message === "object" ? res.data.message : res.data;
  if (message && typeof message.seq === "number") upsertMessage(message);
  scrollToEnd();
  dom.reply.focus();
}

// ---- Modes ----------------------------------------------------------------------------

async function setServiceMode(slug, mode) {
  const svc = serviceBySlug(slug);
  if (!cfg.isAdmin || !svc || svc.mode === mode || pendingModes.has(slug)) return;
  pendingModes.add(slug);
  renderServices();
  const res = await apiCall("PATCH", `services/${encodeURIComponent(slug)}/`, { mode });
  pendingModes.delete(slug);
  if (res.ok) {
    const answered = res.data && typeof res.data === "object" && res.data.slug === slug ? res.data : {};
    applyService({ ...svc, ...answered, mode: answered.mode || mode });
    announce(`${svc.name} is now ${MODE_LABEL[mode]}`);
  } else {
    showPageError(`Couldn't change ${svc.name} to ${MODE_LABEL[mode]}: ${res.detail}`);
    renderServices();
  }
  flushOrder();
}

async function setAllModes(mode) {
  if (!cfg.isAdmin || pendingModes.size) return;
  pendingModes.add("*");
  renderServices();
  const res = await apiCall("POST", "services/set-mode/", { mode });
  pendingModes.delete("*");
  if (res.ok) {
    const data = res.data;
    const list = Array.isArray(data) ? data : data && Array.isArray(data.services) ? data.services : null;
    if (list) list.forEach(applyService);
    else state.services.forEach((s) => applyService({ ...s, mode }));
    announce(`All services are now ${MODE_LABEL[mode]}`);
  } else {
    showPageError(`Couldn't change all services to ${MODE_LABEL[mode]}: ${res.detail}`);
  }
  renderServices();
  flushOrder();
}

let pageErrorTimer = null;
function showPageError(text, { sticky = false } = {}) {
  setText(dom.pageErrorText, text);
  setHidden(dom.pageError, !text);
  window.clearTimeout(pageErrorTimer);
  if (text && !sticky) pageErrorTimer = window.setTimeout(() => setHidden(dom.pageError, true), 12000);
}

// ---- Events ---------------------------------------------------------------------------

dom.services.addEventListener("click", (ev) => {
  const modeBtn = ev.target.closest(".hh-service [data-mode]");
  if (modeBtn) {
    const section = modeBtn.closest("[data-slug]");
    if (section && !modeBtn.disabled) setServiceMode(section.dataset.slug, modeBtn.dataset.mode);
    return;
  }
  const card = ev.target.closest('[data-testid="hh-card"]');
  if (card) openConversation(card.dataset.id);
});

dom.services.addEventListener("keydown", (ev) => {
  const card = ev.target.closest('[data-testid="hh-card"]');
  if (!card || ev.target !== card) return;
  if (ev.key === "Enter" || ev.key === " ") {
    ev.preventDefault();
    openConversation(card.dataset.id);
  } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
    // Move between cards, across services.
    const all = [...dom.services.querySelectorAll('[data-testid="hh-card"]')];
    const next = all[all.indexOf(card) + (ev.key === "ArrowDown" ? 1 : -1)];
    if (next) {
      ev.preventDefault();
      next.focus();
    }
  }
});

dom.setAllGroup.addEventListener("click", (ev) => {
  const btn = ev.target.closest("[data-mode]");
  if (btn && !btn.disabled) setAllModes(btn.dataset.mode);
});

$("[data-page-error-dismiss]").addEventListener("click", () => showPageError(""));

dom.panel.addEventListener("click", (ev) => {
  const btn = ev.target.closest("[data-action]");
  if (!btn || btn.disabled) return;
  if (btn.dataset.action === "hide") hidePanel();
  else runAction(btn.dataset.action);
});

dom.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  sendReply();
});

dom.reply.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault();
    sendReply();
  }
});

dom.reply.addEventListener("input", () => {
  if (!dom.error.hidden && dom.error.textContent === "Type a message first.") clearPanelError();
});

document.addEventListener("keydown", (ev) => {
  if (ev.key !== "Escape" || ev.defaultPrevented || dom.panel.hidden) return;
  if (ev.target.closest && ev.target.closest(".hh-toast")) return;
  hidePanel();
});

function idFromHash() {
  const match = window.location.hash.match(/^#c=([^&]+)/);
  return match ? decodeURIComponent(match[1]) : null;
}

window.addEventListener("hashchange", () => {
  const id = idFromHash();
  if (id) openConversation(id);
});

if (/Mac|iPhone|iPad/.test(navigator.platform || "")) setText(P("mod-key"), "⌘");

// Relative times every 30 s; waiting timers every second (only cards that wait).
window.setInterval(() => {
  for (const card of Object.values(state.cards)) {
    const view = cardEls.get(card.id);
    if (view) setText(view.f.started, relativeTime(card.started_at));
  }
  if (state.watched) refreshPanelTimes();
}, 30000);

function refreshPanelTimes() {
  const card = currentCard();
  const startedAt = (card && card.started_at) || (state.detail && state.detail.started_at);
  if (startedAt) setText(P("started"), `${relativeTime(startedAt)} · ${clockTime(startedAt)}`);
  for (const el of P("flags").querySelectorAll("time[datetime]")) setText(el, relativeTime(el.dateTime));
}

window.setInterval(() => {
  for (const card of Object.values(state.cards)) {
    if (!card.waiting_since) continue;
    const view = cardEls.get(card.id);
    if (view) paintWaiting(view, card);
  }
}, 1000);

// ---- Start ----------------------------------------------------------------------------

setConnection("connecting");
renderServices();
connect();
const initial = idFromHash();
if (initial) openConversation(initial, { focus: true });
