/*!
 * Human Handoff customer widget. Plain JavaScript, no build step, no dependencies.
 * Embed: <script src="https://HOST/static/widget/handoff-widget.js" data-service="SLUG" async></script>
 * Protocol: SPEC section 4 (WebSocket ws(s)://HOST/ws/chat/SLUG/, JSON text frames).
 * Every piece of customer, agent and AI text is set with textContent: it is hostile.
 * The file is pure ASCII (\u escapes in strings) so a host page in any charset can load it.
 */
(() => {
  'use strict';

  // Embedded twice (e.g. a tag manager and the page): the first copy wins.
  if (window.HandoffWidget && window.HandoffWidget.loaded) return;

  const MAX_LEN = 4000;             // SPEC section 3: message text <= 4,000 characters
  const COUNTER_FROM = 3600;        // show "n / 4000" only when it matters
  const TYPING_THROTTLE_MS = 3000;  // at most one typing:on per 3 s
  const TYPING_IDLE_MS = 4000;      // typing:off after 4 s without keystrokes
  const REMOTE_TYPING_TTL_MS = 15000; // a lost typing:off must not leave dots forever
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const HELLO_TIMEOUT_MS = 10000;   // socket open but no `ready`: treat as dead
  const TRANSITION_TIMEOUT_MS = 10000;
  const RESEND_DELAY_MS = 150;      // let the replay that follows `ready` land first
  const NOTICE_MS = 8000;
  const LIVE_AFTER_READY_MS = 1500; // messages sooner than this are replay, not "unread"
  const MESSAGE_ERRORS = new Set(['empty', 'too_long', 'rate_limited']);
  const ROLES = new Set(['user', 'ai', 'human', 'system']);
  const ERROR_TEXT = {
    rate_limited: "You're sending messages too quickly. Please wait a moment and try again.",
    too_long: 'That message is too long (4,000 characters at most).',
    empty: 'Please type a message first.',
  };

  // ---------------------------------------------------------------- configuration

  /** Our own <script>: currentScript is set for async classic scripts, but not in every loader. */
  function findScript() {
    const cur = document.currentScript;
    if (cur && cur.dataset && cur.dataset.service) return cur;
    for (const s of document.querySelectorAll('script[data-service]')) {
      if (/handoff-widget\.js(?:[?#].*)?$/.test(s.src)) return s;
    }
    return null;
  }

  const script = findScript();
  if (!script || !script.dataset.service.trim()) {
    console.warn('[handoff] widget script needs data-service="SLUG"');
    return;
  }
  const slug = script.dataset.service.trim();
  const srcUrl = new URL(script.src, location.href);
  // The socket lives where the script came from, not where the page is hosted.
  const wsUrl = (srcUrl.protocol === 'https:' ? 'wss://' : 'ws://') + srcUrl.host +
    '/ws/chat/' + encodeURIComponent(slug) + '/';
  const title = script.dataset.title || 'Chat with us';
  const startOpen = script.dataset.open === 'true';
  const tokenKey = 'handoff:' + slug + ':visitor';

  function isPlainObject(v) {
    return v !== null && typeof v === 'object' && !Array.isArray(v);
  }

  /** data-profile JSON, overridden by window.HandoffWidgetProfile (read per hello: it may be set late). */
  function readProfile() {
    let profile = {};
    if (script.dataset.profile) {
      try {
        const parsed = JSON.parse(script.dataset.profile);
        if (isPlainObject(parsed)) profile = parsed;
      } catch (e) {
        console.warn('[handoff] data-profile is not valid JSON');
      }
    }
    if (isPlainObject(window.HandoffWidgetProfile)) {
      profile = Object.assign({}, profile, window.HandoffWidgetProfile);
    }
    return profile;
  }

  // Storage can throw (Safari private mode, blocked third-party storage): the chat still works.
  function loadToken() {
    try { return localStorage.getItem(tokenKey); } catch (e) { return null; }
  }
  function saveToken(token) {
    try { localStorage.setItem(tokenKey, token); } catch (e) { /* session-only visitor */ }
  }

  function timeZone() {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || null; } catch (e) { return null; }
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const b = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(b);
    else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // ---------------------------------------------------------------- state

  const state = {
    status: 'connecting',   // connected | connecting | disconnected (mirrored on host[data-state])
    connected: false,       // true between `ready` and close
    unavailable: false,     // closed with 4404/4403: never reconnect
    conversationId: null,
    lastSeq: 0,
    mode: null,
    aiPaused: false,
    agent: null,
    humanAvailable: false,
    ended: false,           // the customer ended the chat; the next message starts a new one
    open: false,
  };
  const seqs = new Map();    // seq -> {node, role, text, clientId}: current conversation only
  const pending = new Map(); // client_id -> {text, node}: sent optimistically, not yet stored
  let awaiting = [];         // client_ids sent on this socket, in order, with no answer yet
  let ws = null;
  let attempt = 0;
  let reconnectTimer = null;
  let helloTimer = null;
  let waitingForVisible = false;
  let inflight = null;       // {kind: 'human'|'end', timer}
  let typingOn = false;
  let typingSentAt = 0;
  let typingIdleTimer = null;
  let remoteTypingTimer = null;
  let noticeTimer = null;
  let readyAt = 0;
  let unread = 0;
  let endedId = null;        // the conversation the customer ended: its late frames change nothing

  // ---------------------------------------------------------------- DOM helpers

  /** Build an element; `text` goes through textContent, everything else through setAttribute. */
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === false || v === null || v === undefined) continue;
      if (k === 'text') node.textContent = v;
      else if (k === 'class') node.className = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children || []) if (c) node.append(c);
    return node;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const ICONS = {
    chat: 'M21 12a8 8 0 0 1-11.6 7.1L4 20l1.1-4.4A8 8 0 1 1 21 12z',
    close: 'M6 6l12 12M18 6L6 18',
    up: 'M7 11v10H4a1 1 0 0 1-1-1v-8a1 1 0 0 1 1-1h3zm0 0l4-8a2.5 2.5 0 0 1 3 2.5V9h5a2 2 0 0 1 2 2.3l-1.3 8A2 2 0 0 1 17.7 21H7',
    down: 'M17 13V3h3a1 1 0 0 1 1 1v8a1 1 0 0 1-1 1h-3zm0 0l-4 8a2.5 2.5 0 0 1-3-2.5V15H5a2 2 0 0 1-2-2.3l1.3-8A2 2 0 0 1 6.3 3H17',
  };

  function icon(name) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', ICONS[name]);
    svg.append(path);
    return svg;
  }

  function formatTime(iso) {
    const d = iso ? new Date(iso) : new Date();
    if (Number.isNaN(d.getTime())) return null;
    return el('time', {
      datetime: d.toISOString(),
      text: d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }),
    });
  }

  // ---------------------------------------------------------------- styles

  const CSS = `
:host { all: initial; }
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
.root { pointer-events: auto; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #111827; -webkit-font-smoothing: antialiased; }
button { font: inherit; }
:focus-visible { outline: 3px solid #2563eb; outline-offset: 2px; }
.sr-only { position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0; }
svg { width: 20px; height: 20px; fill: none; stroke: currentColor; stroke-width: 2;
  stroke-linecap: round; stroke-linejoin: round; }

.bubble { position: fixed; right: 20px; bottom: 20px; z-index: 2147483000; width: 58px; height: 58px;
  border: 0; border-radius: 50%; background: #1d4ed8; color: #fff; cursor: pointer; display: grid;
  place-items: center; box-shadow: 0 8px 24px rgba(15, 23, 42, .28); transition: transform .15s ease, background .15s; }
.bubble:hover { background: #1e40af; transform: translateY(-2px); }
.bubble:focus-visible { outline: 3px solid #1d4ed8; outline-offset: 3px; box-shadow: 0 0 0 3px #fff, 0 8px 24px rgba(15, 23, 42, .28); }
.bubble svg { width: 28px; height: 28px; }
.badge { position: absolute; top: 3px; right: 3px; width: 14px; height: 14px; border-radius: 50%;
  background: #dc2626; border: 2px solid #fff; }

.panel { position: fixed; right: 20px; bottom: 90px; z-index: 2147483000; width: 360px;
  height: min(600px, calc(100vh - 120px)); display: flex; flex-direction: column; overflow: hidden;
  background: #f9fafb; border: 1px solid #e5e7eb; border-radius: 16px;
  box-shadow: 0 16px 48px rgba(15, 23, 42, .22), 0 2px 6px rgba(15, 23, 42, .08);
  opacity: 0; transform: translateY(12px) scale(.98); transform-origin: bottom right; visibility: hidden;
  transition: opacity .18s ease, transform .18s ease, visibility 0s linear .18s; }
.panel.open { opacity: 1; transform: none; visibility: visible; transition-delay: 0s; }
@media (max-width: 480px) {
  .panel { inset: 0; width: 100%; height: 100%; border-radius: 0; border: 0; }
  .root.is-open .bubble { display: none; }
}
@media (prefers-reduced-motion: reduce) {
  .panel, .bubble { transition: none; }
  .dots span { animation: none !important; opacity: .8; }
}

.header { display: flex; align-items: center; gap: 8px; padding: 12px 10px 12px 16px; background: #1d4ed8; color: #fff; }
.titles { flex: 1; min-width: 0; }
.title { margin: 0; font-size: 16px; font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.conn { margin: 2px 0 0; font-size: 12px; display: flex; align-items: center; gap: 6px; }
.conn::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: #facc15; }
.panel[data-conn="connected"] .conn::before { background: #4ade80; }
.panel[data-conn="disconnected"] .conn::before { background: #fca5a5; }
.icon-btn { width: 36px; height: 36px; border: 0; border-radius: 8px; background: transparent; color: #fff;
  cursor: pointer; display: grid; place-items: center; }
.icon-btn:hover { background: rgba(255, 255, 255, .16); }
.header :focus-visible { outline-color: #fff; }

.banner { padding: 8px 16px; font-size: 13px; background: #dcfce7; color: #14532d; border-bottom: 1px solid #bbf7d0; }
.log { flex: 1; overflow-y: auto; padding: 16px 12px 8px; display: flex; flex-direction: column; gap: 10px; }
.log:focus-visible { outline-offset: -3px; }
.msg { display: flex; flex-direction: column; max-width: 84%; align-self: flex-start; }
.text { padding: 8px 12px; border-radius: 14px; white-space: pre-wrap; overflow-wrap: anywhere; }
.who { margin: 0 4px 3px; font-size: 12px; font-weight: 600; color: #4b5563; }
.foot { display: flex; align-items: center; gap: 4px; min-height: 18px; margin: 3px 4px 0; font-size: 11px; color: #6b7280; }
.msg-user { align-self: flex-end; align-items: flex-end; }
.msg-user .text { background: #1d4ed8; color: #fff; border-bottom-right-radius: 4px; }
.msg-user[data-pending="true"] .text { background: #3b5fc4; }
.msg-ai .text { background: #fff; border: 1px solid #d1d5db; border-bottom-left-radius: 4px; }
.msg-human .who { color: #166534; }
.msg-human .text { background: #dcfce7; color: #14532d; border: 1px solid #86efac; border-bottom-left-radius: 4px; }
.msg-system { align-self: center; align-items: center; max-width: 92%; text-align: center; }
.msg-system .text { background: #fef9c3; color: #713f12; border: 1px solid #fde68a; border-radius: 10px;
  font-size: 13px; font-style: italic; }
.archived { opacity: .8; }
.thumb { width: 26px; height: 26px; padding: 0; border: 1px solid transparent; border-radius: 6px;
  background: transparent; color: #6b7280; cursor: pointer; display: grid; place-items: center; }
.thumb svg { width: 15px; height: 15px; }
.thumb:hover { background: #f3f4f6; color: #111827; }
.thumb[aria-pressed="true"] { background: #dbeafe; border-color: #93c5fd; color: #1d4ed8; }
.thumb:disabled { cursor: default; opacity: .5; }

.typing { display: flex; align-items: center; gap: 8px; padding: 0 16px 6px; font-size: 12px; color: #4b5563; }
.dots { display: inline-flex; gap: 3px; }
.dots span { width: 6px; height: 6px; border-radius: 50%; background: #6b7280; animation: hh-blink 1.2s infinite ease-in-out; }
.dots span:nth-child(2) { animation-delay: .2s; }
.dots span:nth-child(3) { animation-delay: .4s; }
@keyframes hh-blink { 0%, 80%, 100% { opacity: .25; } 40% { opacity: 1; } }
.notice { margin: 0 12px 8px; padding: 8px 10px; border-radius: 8px; font-size: 13px;
  background: #fee2e2; color: #7f1d1d; border: 1px solid #fecaca; }

.composer { padding: 10px 12px 8px; background: #fff; border-top: 1px solid #e5e7eb; }
.row { display: flex; align-items: flex-end; gap: 8px; }
textarea { flex: 1; min-height: 40px; max-height: 120px; padding: 9px 11px; resize: none; font: inherit;
  line-height: 1.4; color: inherit; background: #fff; border: 1px solid #9ca3af; border-radius: 10px; }
textarea:focus-visible { outline: none; border-color: #1d4ed8; box-shadow: 0 0 0 3px rgba(37, 99, 235, .35); }
textarea:disabled { background: #f3f4f6; }
.send { height: 40px; padding: 0 16px; border: 0; border-radius: 10px; background: #1d4ed8; color: #fff;
  font-weight: 600; cursor: pointer; }
.send:hover { background: #1e40af; }
.send:disabled, .link:disabled { cursor: not-allowed; opacity: .55; }
.counter { margin-top: 4px; font-size: 11px; text-align: right; color: #4b5563; }
.counter.full { color: #b91c1c; font-weight: 600; }
.actions { display: flex; justify-content: space-between; gap: 8px; margin-top: 6px; }
.link { padding: 4px 6px; border: 0; border-radius: 6px; background: none; color: #1d4ed8; font-size: 13px;
  cursor: pointer; text-decoration: underline; text-underline-offset: 2px; }
.link:hover { background: #eff6ff; }
.link.end { margin-left: auto; color: #b91c1c; }
.link.end:hover { background: #fef2f2; }
`;

  // ---------------------------------------------------------------- UI

  // An unknown custom element: host-page rules for div/section are unlikely to reach it.
  // A 1px fixed box (not 0px) so browser tests can wait for it "visible" with data-state set.
  const host = document.createElement('handoff-widget');
  host.setAttribute('data-state', 'connecting');
  host.setAttribute('data-testid', 'hh-host');
  host.style.cssText = 'display:block!important;position:fixed!important;right:0!important;bottom:0!important;' +
    'width:1px!important;height:1px!important;margin:0!important;padding:0!important;border:0!important;' +
    'z-index:2147483000!important;pointer-events:none!important;';
  const shadow = host.attachShadow({ mode: 'open' });

  const ui = {};
  ui.badge = el('span', { class: 'badge', 'aria-hidden': 'true', hidden: true });
  ui.bubble = el('button', {
    type: 'button', class: 'bubble', 'aria-label': 'Open chat', 'aria-expanded': 'false',
    'aria-controls': 'hh-panel', 'data-testid': 'hh-bubble',
  }, [icon('chat'), ui.badge]);
  ui.title = el('h2', { class: 'title', id: 'hh-title', text: title });
  ui.conn = el('p', { class: 'conn', 'data-testid': 'hh-conn', text: 'Connecting\u2026' });
  ui.close = el('button', {
    type: 'button', class: 'icon-btn', 'aria-label': 'Close chat', 'data-testid': 'hh-close',
  }, [icon('close')]);
  ui.banner = el('div', { class: 'banner', 'data-testid': 'hh-banner', hidden: true });
  ui.log = el('div', {
    class: 'log', role: 'log', 'aria-live': 'polite', 'aria-relevant': 'additions',
    'aria-label': 'Conversation', tabindex: '0', 'data-testid': 'hh-log',
  });
  ui.typingText = el('span', { text: 'Assistant is typing\u2026' });
  ui.typing = el('div', { class: 'typing', 'data-testid': 'hh-typing', hidden: true }, [
    el('span', { class: 'dots', 'aria-hidden': 'true' }, [el('span'), el('span'), el('span')]),
    ui.typingText,
  ]);
  ui.notice = el('div', { class: 'notice', role: 'status', 'data-testid': 'hh-notice', hidden: true });
  ui.input = el('textarea', {
    rows: '1', maxlength: String(MAX_LEN), placeholder: 'Type a message\u2026',
    'aria-label': 'Type your message', 'aria-describedby': 'hh-counter', 'data-testid': 'hh-input',
  });
  ui.send = el('button', { type: 'submit', class: 'send', 'data-testid': 'hh-send', text: 'Send' });
  ui.counter = el('div', { class: 'counter', id: 'hh-counter', 'data-testid': 'hh-counter', hidden: true });
  ui.human = el('button', {
    type: 'button', class: 'link', 'data-testid': 'hh-human', text: 'Talk to a person', hidden: true,
  });
  ui.end = el('button', {
    type: 'button', class: 'link end', 'data-testid': 'hh-end', text: 'End chat', hidden: true,
  });
  ui.form = el('form', { class: 'composer', novalidate: true }, [
    el('div', { class: 'row' }, [ui.input, ui.send]),
    ui.counter,
    el('div', { class: 'actions' }, [ui.human, ui.end]),
  ]);
  ui.panel = el('div', {
    id: 'hh-panel', class: 'panel', role: 'dialog', 'aria-modal': 'false', 'aria-labelledby': 'hh-title',
    'data-testid': 'hh-panel', 'data-conn': 'connecting',
  }, [
    el('div', { class: 'header' }, [el('div', { class: 'titles' }, [ui.title, ui.conn]), ui.close]),
    ui.banner, ui.log, ui.typing, ui.notice, ui.form,
  ]);
  ui.root = el('div', { class: 'root' }, [ui.bubble, ui.panel]);
  const style = el('style');
  style.textContent = CSS;
  shadow.append(style, ui.root);

  // ---------------------------------------------------------------- panel

  function open() {
    if (state.open) return;
    state.open = true;
    ui.panel.classList.add('open');
    ui.root.classList.add('is-open');
    ui.bubble.setAttribute('aria-expanded', 'true');
    unread = 0;
    ui.badge.hidden = true;
    scrollToEnd();
    // After the style flip, so the panel is visible (focusable) when we focus.
    requestAnimationFrame(() => { if (!ui.input.disabled) ui.input.focus(); });
  }

  function close(restoreFocus) {
    if (!state.open) return;
    const hadFocus = shadow.activeElement !== null;
    state.open = false;
    ui.panel.classList.remove('open');
    ui.root.classList.remove('is-open');
    ui.bubble.setAttribute('aria-expanded', 'false');
    if (restoreFocus || hadFocus) ui.bubble.focus();
  }

  function scrollToEnd() {
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function nearBottom() {
    return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
  }

  function showNotice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { ui.notice.hidden = true; }, NOTICE_MS);
  }

  function setConn(status, text) {
    state.status = status;
    host.setAttribute('data-state', status);
    ui.panel.setAttribute('data-conn', status);
    if (ui.conn.textContent !== text) ui.conn.textContent = text;
  }

  function hasConversation() {
    return !state.ended && (state.conversationId !== null || seqs.size > 0);
  }

  /** One place decides what is enabled and visible, from state alone. */
  function updateControls() {
    const blocked = inflight !== null || state.unavailable;
    ui.input.disabled = blocked;
    ui.send.disabled = blocked;
    // Only Human-Supported offers the button; Human Only already waits for a person.
    ui.human.hidden = state.mode !== 'human_supported' || state.agent !== null || state.aiPaused;
    ui.human.disabled = blocked || !state.connected;
    ui.end.hidden = !hasConversation();
    ui.end.disabled = blocked || !state.connected;
    const banner = state.agent && !state.ended ? "You're chatting with " + state.agent : '';
    ui.banner.hidden = !banner;
    if (ui.banner.textContent !== banner) ui.banner.textContent = banner;
    // A control that just got hidden or disabled must not strand keyboard focus.
    const active = shadow.activeElement;
    if (state.open && !blocked && active && (active.disabled || active.hidden)) ui.input.focus();
  }

  function updateCounter() {
    const n = ui.input.value.length;
    ui.counter.hidden = n < COUNTER_FROM;
    ui.counter.textContent = n + ' / ' + MAX_LEN;
    ui.counter.classList.toggle('full', n >= MAX_LEN);
  }

  function autosize() {
    ui.input.style.height = 'auto';
    ui.input.style.height = Math.min(ui.input.scrollHeight + 2, 120) + 'px';
  }

  // ---------------------------------------------------------------- transcript

  function labelFor(role, m) {
    if (role === 'ai') return m.specialist || 'Assistant';
    if (role === 'human') return m.author || 'Support agent';
    return null;
  }

  function buildThumbs(feedback) {
    return ['up', 'down'].map((value) => el('button', {
      type: 'button', class: 'thumb', 'data-testid': 'hh-' + value, 'data-value': value,
      'aria-label': value === 'up' ? 'Helpful' : 'Not helpful',
      'aria-pressed': feedback === value ? 'true' : 'false',
    }, [icon(value)]));
  }

  /** A message element; `m` is a server frame or a local stand-in with the same fields. */
  function buildMessage(m, opts) {
    const role = ROLES.has(m.role) ? m.role : 'system';
    const node = el('div', {
      class: 'msg msg-' + role, 'data-testid': 'hh-message', 'data-role': role,
      'data-seq': typeof m.seq === 'number' ? String(m.seq) : null,
      'data-pending': opts && opts.pending ? 'true' : null,
    });
    const label = labelFor(role, m);
    if (label) node.append(el('div', { class: 'who', text: label }));
    // Screen readers hear who spoke; sighted users see it from alignment and colour.
    if (role === 'user') node.append(el('span', { class: 'sr-only', text: 'You: ' }));
    node.append(el('div', { class: 'text', text: String(m.text || '') }));
    const foot = el('div', { class: 'foot' }, [formatTime(m.created_at)]);
    if (opts && opts.pending) foot.append(el('span', { class: 'pending-label' }));
    if (role === 'ai' && typeof m.seq === 'number') foot.append(...buildThumbs(m.feedback));
    node.append(foot);
    return node;
  }

  /** Keep the log ordered by seq; optimistic bubbles (no seq yet) stay last. */
  function insertBySeq(node, seq) {
    let before = null;
    for (const child of ui.log.children) {
      const s = child.getAttribute('data-seq');
      if (s !== null && Number(s) > seq) { before = child; break; }
      if (!before && child.getAttribute('data-pending') === 'true') before = child;
    }
    ui.log.insertBefore(node, before);
  }

  function sameMessage(rec, m) {
    if (rec.clientId && m.client_id) return rec.clientId === m.client_id;
    return rec.role === m.role && rec.text === String(m.text || '');
  }

  /** The server moved on to a new conversation: keep old bubbles visible, forget their seqs. */
  function archiveTranscript() {
    for (const rec of seqs.values()) {
      rec.node.setAttribute('data-archived-seq', rec.node.getAttribute('data-seq'));
      rec.node.removeAttribute('data-seq');
      rec.node.classList.add('archived');
      for (const b of rec.node.querySelectorAll('.thumb')) b.disabled = true;
    }
    seqs.clear();
    state.lastSeq = 0;
    state.conversationId = null;
  }

  function addNote(text) {
    const node = el('div', {
      class: 'msg msg-system', 'data-testid': 'hh-note', 'data-role': 'system', 'data-local': 'true',
    }, [el('div', { class: 'text', text })]);
    ui.log.append(node);
    scrollToEnd();
  }

  function showGreeting(text) {
    if (ui.log.querySelector('[data-testid="hh-message"], [data-testid="hh-greeting"]')) return;
    const node = buildMessage({ role: 'ai', text });
    node.setAttribute('data-testid', 'hh-greeting'); // local, not stored: no seq, no thumbs
    node.setAttribute('data-local', 'true');
    ui.log.prepend(node);
  }

  function applyFeedback(seq, value) {
    const rec = seqs.get(seq);
    if (!rec) return;
    for (const b of rec.node.querySelectorAll('.thumb')) {
      b.setAttribute('aria-pressed', b.getAttribute('data-value') === value ? 'true' : 'false');
    }
  }

  function refreshPendingLabels() {
    const text = state.connected ? 'Sending\u2026' : 'Waiting for connection\u2026';
    for (const p of pending.values()) {
      const label = p.node.querySelector('.pending-label');
      if (label && label.textContent !== text) label.textContent = text;
    }
  }

  // ---------------------------------------------------------------- socket

  function wsSend(frame) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    if (ws || state.unavailable) return;
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    setConn('connecting', attempt > 0 ? 'Reconnecting\u2026' : 'Connecting\u2026');
    let sock;
    try {
      sock = new WebSocket(wsUrl);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    // Handlers check `sock === ws` so a socket we abandoned can't touch current state.
    sock.onopen = () => {
      if (sock !== ws) return;
      wsSend({
        type: 'hello', visitor_token: loadToken(), last_seq: state.lastSeq,
        timezone: timeZone(), profile: readProfile(),
      });
      helloTimer = setTimeout(() => { if (sock === ws) sock.close(4000, 'no ready'); }, HELLO_TIMEOUT_MS);
    };
    sock.onmessage = (ev) => { if (sock === ws) handleFrame(ev.data); };
    sock.onclose = (ev) => { if (sock === ws) onClose(ev); };
  }

  function dropSocket() {
    clearTimeout(helloTimer);
    const sock = ws;
    ws = null;
    state.connected = false;
    awaiting = [];
    typingOn = false;
    hideRemoteTyping();
    if (sock && sock.readyState <= WebSocket.OPEN) sock.close(1000);
  }

  function onClose(ev) {
    dropSocket();
    if (inflight) finishTransition('closed');
    if (ev.code === 4404 || ev.code === 4403) {
      // Unknown service or refused: retrying can't fix it, so don't hammer the server.
      state.unavailable = true;
      setConn('disconnected', 'Chat is unavailable');
      showNotice('Chat is unavailable right now.');
    } else {
      scheduleReconnect();
    }
    refreshPendingLabels();
    updateControls();
  }

  /** Exponential backoff with jitter; paused while the page is hidden. */
  function scheduleReconnect() {
    if (state.unavailable || reconnectTimer) return;
    setConn('disconnected', 'Reconnecting\u2026');
    if (document.hidden) { waitingForVisible = true; return; }
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    const delay = cap / 2 + Math.random() * (cap / 2);
    attempt += 1;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null;
      if (document.hidden) waitingForVisible = true;
      else connect();
    }, delay);
  }

  function handleFrame(data) {
    let f;
    try { f = JSON.parse(data); } catch (e) { return; }
    if (!isPlainObject(f)) return;
    switch (f.type) {
      case 'ready': onReady(f); break;
      case 'message': onMessage(f); break;
      case 'typing': onTyping(f); break;
      case 'status': onStatus(f); break;
      case 'feedback_ok': applyFeedback(f.seq, f.value); break;
      case 'error': onError(f); break;
      default: break; // newer server, older widget: ignore what we don't know
    }
  }

  function onReady(f) {
    clearTimeout(helloTimer);
    if (typeof f.visitor_token === 'string' && f.visitor_token) saveToken(f.visitor_token);
    const id = f.conversation_id || null;
    if (id !== null && id === endedId) {
      // Our `end` never took effect (it timed out): the same conversation is still open.
      state.ended = false;
      state.conversationId = id;
      endedId = null;
    }
    const switched = id !== null && (
      (state.conversationId !== null && id !== state.conversationId) || (state.ended && seqs.size > 0));
    if (switched) {
      // Another conversation is open now (e.g. started in another tab). We asked for
      // seq > our old lastSeq of a different conversation, so start over with last_seq 0.
      const needReplay = state.lastSeq > 0;
      archiveTranscript();
      state.ended = false;
      state.conversationId = id;
      if (needReplay) { dropSocket(); connect(); return; }
    } else if (id === null && hasConversation()) {
      markEnded(); // closed while we were away (idle, or by an agent)
    }
    if (id !== null) state.conversationId = id;
    applyStatusFields(f, true);
    state.connected = true;
    attempt = 0;
    readyAt = Date.now();
    setConn('connected', 'Online');
    if (typeof f.greeting === 'string' && f.greeting.trim() && state.mode !== 'human_only') {
      showGreeting(f.greeting);
    }
    refreshPendingLabels();
    updateControls();
    const sock = ws;
    setTimeout(() => { if (sock === ws && state.connected) resendPending(); }, RESEND_DELAY_MS);
  }

  function onMessage(m) {
    if (typeof m.seq !== 'number') return;
    const existing = seqs.get(m.seq);
    if (existing && sameMessage(existing, m)) {
      // Replay or an idempotent re-send: never render a seq twice.
      settlePending(m.client_id);
      if (m.feedback) applyFeedback(m.seq, m.feedback);
      return;
    }
    if (existing) archiveTranscript(); // a reused seq means a new conversation began
    const stick = nearBottom() || m.role === 'user';
    const node = buildMessage(m);
    insertBySeq(node, m.seq);
    settlePending(m.client_id);
    seqs.set(m.seq, { node, role: m.role, text: String(m.text || ''), clientId: m.client_id || null });
    state.lastSeq = Math.max(state.lastSeq, m.seq);
    if (m.role === 'ai' || m.role === 'human') hideRemoteTyping();
    if (!state.open && m.role !== 'user' && Date.now() - readyAt > LIVE_AFTER_READY_MS) {
      unread += 1;
      ui.badge.hidden = false;
    }
    if (stick) scrollToEnd();
    if (inflight) finishTransition('answer');
    updateControls();
  }

  /** The server stored (or already had) this client_id: drop it from the queue. */
  function settlePending(clientId) {
    if (!clientId) return;
    const p = pending.get(clientId);
    if (p) p.node.remove();
    pending.delete(clientId);
    awaiting = awaiting.filter((id) => id !== clientId);
  }

  function applyStatusFields(f, fromReady) {
    if (typeof f.mode === 'string') state.mode = f.mode;
    if (typeof f.human_available === 'boolean') state.humanAvailable = f.human_available;
    // A service-wide status (conversation_id null) must not clear our own conversation's claim.
    const scoped = fromReady || f.conversation_id || !hasConversation();
    if (scoped) {
      if (typeof f.ai_paused === 'boolean') state.aiPaused = f.ai_paused;
      if ('agent' in f) state.agent = f.agent || null;
    }
  }

  function onStatus(f) {
    const id = f.conversation_id || null;
    if (id !== null && id === endedId) {
      // The closing status of the chat we ended: only service-wide fields still matter.
      applyStatusFields({ mode: f.mode, human_available: f.human_available }, false);
    } else {
      if (id !== null) {
        // A conversation we don't know (e.g. started in another tab) replaces the old one.
        if ((state.conversationId !== null && id !== state.conversationId) || state.ended) archiveTranscript();
        state.conversationId = id;
        state.ended = false;
      }
      applyStatusFields(f, false);
    }
    if (inflight) finishTransition('answer');
    updateControls();
  }

  function onTyping(f) {
    if (!f.on) { hideRemoteTyping(); return; }
    const human = f.who === 'human' || (f.who === undefined && state.agent);
    ui.typingText.textContent = human ? (state.agent || 'An agent') + ' is typing\u2026' : 'Assistant is typing\u2026';
    ui.typing.hidden = false;
    clearTimeout(remoteTypingTimer);
    remoteTypingTimer = setTimeout(hideRemoteTyping, REMOTE_TYPING_TTL_MS);
    if (nearBottom()) scrollToEnd();
  }

  function hideRemoteTyping() {
    clearTimeout(remoteTypingTimer);
    ui.typing.hidden = true;
  }

  function onError(f) {
    const code = String(f.code || 'error');
    // Errors carry no client_id: answers come in send order, so the oldest unanswered send failed.
    if (MESSAGE_ERRORS.has(code)) {
      const id = f.client_id || awaiting.shift();
      if (id) restorePending(id);
    }
    if (inflight) finishTransition('error');
    showNotice(f.detail ? String(f.detail) : (ERROR_TEXT[code] || 'Something went wrong (' + code + ').'));
    updateControls();
  }

  /** A send failed: remove the bubble and give the text back, never losing what was typed. */
  function restorePending(clientId) {
    const p = pending.get(clientId);
    if (!p) return;
    p.node.remove();
    pending.delete(clientId);
    awaiting = awaiting.filter((id) => id !== clientId);
    const current = ui.input.value;
    ui.input.value = current.trim() ? (p.text + '\n' + current).slice(0, MAX_LEN) : p.text;
    updateCounter();
    autosize();
    if (state.open) ui.input.focus();
  }

  // ---------------------------------------------------------------- customer actions

  function transmit(clientId) {
    const p = pending.get(clientId);
    if (!p || !state.connected) return;
    if (wsSend({ type: 'message', text: p.text, client_id: clientId })) awaiting.push(clientId);
  }

  /** After reconnect and replay: re-send what the server never acknowledged, same client_id. */
  function resendPending() {
    for (const id of pending.keys()) if (!awaiting.includes(id)) transmit(id);
  }

  function sendMessage() {
    const text = ui.input.value;
    if (inflight || state.unavailable) return;
    if (!text.trim()) { showNotice(ERROR_TEXT.empty); return; }
    if (text.length > MAX_LEN) { showNotice(ERROR_TEXT.too_long); return; }
    if (state.ended) {
      // The server starts a new conversation on this message; its seqs begin at 1 again.
      archiveTranscript();
      state.ended = false;
    }
    stopTyping();
    const clientId = uuid();
    const node = buildMessage({ role: 'user', text, created_at: new Date().toISOString() }, { pending: true });
    node.setAttribute('data-client-id', clientId);
    pending.set(clientId, { text, node });
    ui.log.append(node);
    scrollToEnd();
    ui.input.value = '';
    updateCounter();
    autosize();
    refreshPendingLabels();
    transmit(clientId); // if offline it stays queued and goes out after the next `ready`
  }

  function sendFeedback(seq, value) {
    if (!wsSend({ type: 'feedback', seq, value })) showNotice("You're offline. Please try again in a moment.");
  }

  /** Talk to a person / End chat: lock the controls until the server answers or we time out. */
  function startTransition(kind, frame) {
    if (inflight) return;
    if (!state.connected || !wsSend(frame)) {
      showNotice("You're offline. Please try again in a moment.");
      return;
    }
    if (kind === 'end') stopTyping();
    inflight = { kind, timer: setTimeout(() => finishTransition('timeout'), TRANSITION_TIMEOUT_MS) };
    updateControls();
  }

  function finishTransition(outcome) {
    if (!inflight) return;
    const kind = inflight.kind;
    clearTimeout(inflight.timer);
    inflight = null;
    if (kind === 'end') {
      // The frame went out on an open socket; silence from the server still means it ended.
      if (outcome === 'answer' || outcome === 'timeout') markEnded();
      else showNotice("We couldn't end the chat. Please try again.");
    }
    updateControls();
    if (state.open && shadow.activeElement === null) ui.input.focus();
  }

  function markEnded() {
    if (state.ended) return;
    state.ended = true;
    endedId = state.conversationId;
    state.conversationId = null;
    state.agent = null;
    state.aiPaused = false;
    hideRemoteTyping();
    addNote('Chat ended');
    updateControls();
  }

  function onInput() {
    updateCounter();
    autosize();
    if (!ui.input.value.trim()) { stopTyping(); return; }
    const now = Date.now();
    if (state.connected && (!typingOn || now - typingSentAt >= TYPING_THROTTLE_MS)) {
      if (wsSend({ type: 'typing', on: true })) { typingOn = true; typingSentAt = now; }
    }
    clearTimeout(typingIdleTimer);
    typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(typingIdleTimer);
    if (!typingOn) return;
    typingOn = false;
    wsSend({ type: 'typing', on: false });
  }

  // ---------------------------------------------------------------- events

  ui.bubble.addEventListener('click', () => (state.open ? close(true) : open()));
  ui.close.addEventListener('click', () => close(true));
  ui.root.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && state.open) { ev.stopPropagation(); close(true); }
  });
  ui.form.addEventListener('submit', (ev) => { ev.preventDefault(); sendMessage(); });
  ui.input.addEventListener('keydown', (ev) => {
    // Enter sends, Shift+Enter is a newline; never interrupt an IME composition.
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      sendMessage();
    }
  });
  ui.input.addEventListener('input', onInput);
  ui.human.addEventListener('click', () => startTransition('human', { type: 'request_human' }));
  ui.end.addEventListener('click', () => startTransition('end', { type: 'end' }));
  ui.log.addEventListener('click', (ev) => {
    // The seq lives on the message only, so `[data-seq="N"]` always means one message.
    const b = ev.target.closest('.thumb');
    const msg = b && b.closest('[data-testid="hh-message"][data-seq]');
    if (msg && !b.disabled) sendFeedback(Number(msg.getAttribute('data-seq')), b.getAttribute('data-value'));
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && waitingForVisible) { waitingForVisible = false; connect(); }
  });
  window.addEventListener('online', () => { if (!ws && !state.unavailable) connect(); });

  // ---------------------------------------------------------------- start

  window.HandoffWidget = Object.freeze({
    loaded: true,
    open,
    close: () => close(false),
    element: host,
    get state() {
      return Object.freeze({
        status: state.status, connected: state.connected, conversationId: state.conversationId,
        lastSeq: state.lastSeq, mode: state.mode, aiPaused: state.aiPaused, agent: state.agent,
        humanAvailable: state.humanAvailable, ended: state.ended, open: state.open,
        pending: pending.size, unavailable: state.unavailable,
      });
    },
  });

  function mount() {
    document.body.append(host);
    updateControls();
    if (startOpen) open();
    connect();
  }

  if (document.body) mount();
  else document.addEventListener('DOMContentLoaded', mount, { once: true });
})();
