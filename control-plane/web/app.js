// Warden's web page: sign-in by OpenID Connect (authorization code + PKCE, a
// public client), the approvers' queue (/approvals), the auditors' replay of
// recorded sessions (/sessions) and each person's machine keys (/keys). No
// framework, no build step. Everything that came from a request (prompt,
// answer, names, reasons) is put in the page with textContent, never as HTML.
'use strict';

(function () {
  const PKCE_KEY = 'warden.signin';   // verifier, state, nonce, where to return
  const TOKEN_KEY = 'warden.session'; // {token, exp} for this tab only
  const REFRESH_MS = 15000;

  const $ = (id) => document.getElementById(id);
  let config = null;
  let session = null; // {token, claims}
  let me = null;      // the caller as GET /v1/whoami tells it: {subject, groups, admin, ...}
  let view = 'pending';
  let refreshTimer = null;
  // Which page this is: the same document serves /approvals, /sessions and /keys.
  const PAGES = ['approvals', 'sessions', 'keys'];
  const pageOf = (path) => PAGES.find((p) => new RegExp(`/${p}/?$`).test(path)) || 'approvals';
  let mode = pageOf(location.pathname);

  // ---- small helpers -------------------------------------------------------

  function b64url(bytes) {
    let s = '';
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function randomString(n) {
    return b64url(crypto.getRandomValues(new Uint8Array(n)));
  }

  async function s256(text) {
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
    return b64url(new Uint8Array(digest));
  }

  // Reads a JWT's claims. Only to show who is signed in and to check the
  // nonce: the control plane verifies every token it is sent.
  function claimsOf(jwt) {
    try {
      const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(part + '='.repeat((4 - part.length % 4) % 4));
      const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      return null;
    }
  }

  function text(el, value) {
    el.textContent = value == null || value === '' ? '\u2014' : String(value);
  }

  function showAlert(message) {
    const el = $('alert');
    el.textContent = message;
    el.hidden = !message;
  }

  function setStatus(message) {
    $('status').textContent = message || '';
  }

  function toDate(value) {
    if (value == null || value === '') return null;
    const d = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
    return isNaN(d.getTime()) ? null : d;
  }

  function relative(date) {
    const seconds = Math.round((date.getTime() - Date.now()) / 1000);
    const abs = Math.abs(seconds);
    let amount, unit;
    if (abs < 60) { amount = seconds; unit = 'second'; }
    else if (abs < 3600) { amount = Math.round(seconds / 60); unit = 'minute'; }
    else if (abs < 86400) { amount = Math.round(seconds / 3600); unit = 'hour'; }
    else { amount = Math.round(seconds / 86400); unit = 'day'; }
    return new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' }).format(amount, unit);
  }

  // A <time> element: relative text, the exact time as its title.
  function timeEl(value) {
    const d = toDate(value);
    if (!d) return document.createTextNode('\u2014');
    const t = document.createElement('time');
    t.dateTime = d.toISOString();
    t.title = d.toLocaleString();
    t.textContent = relative(d);
    return t;
  }

  function setTime(el, value, prefix) {
    el.replaceChildren();
    if (prefix) el.append(prefix);
    el.append(timeEl(value));
  }

  function requester(a) {
    return a.email && a.email !== a.subject ? `${a.subject} <${a.email}>` : a.subject;
  }

  // ---- sign-in -------------------------------------------------------------

  function redirectUri() {
    return config.redirect_uri || `${location.origin}/approvals`;
  }

  // The URL of one of the two pages: beside the redirect URI (/approvals).
  function pageUrl(which) {
    const base = (config && config.redirect_uri) || `${location.origin}/approvals`;
    return base.replace(/\/approvals\/?$/, `/${which}`);
  }

  async function signIn() {
    if (!config) return showAlert('Sign-in is not available: the page has no identity provider configuration.');
    if (!window.crypto || !crypto.subtle) {
      return showAlert('This browser cannot sign in here: PKCE needs a secure context (HTTPS, or localhost).');
    }
    const verifier = randomString(32);
    const pending = {
      verifier,
      state: randomString(16),
      nonce: randomString(16),
      hash: location.hash,
      // The IdP returns to /approvals; a sign-in started on /sessions or /keys goes back there.
      page: mode,
    };
    sessionStorage.setItem(PKCE_KEY, JSON.stringify(pending));
    const params = new URLSearchParams({
      response_type: 'code',
      client_id: config.client_id,
      redirect_uri: redirectUri(),
      scope: config.scopes.join(' '),
      state: pending.state,
      nonce: pending.nonce,
      code_challenge: await s256(verifier),
      code_challenge_method: 'S256',
    });
    const sep = config.authorization_endpoint.includes('?') ? '&' : '?';
    location.assign(config.authorization_endpoint + sep + params.toString());
  }

  // Back from the identity provider with ?code=&state= (or ?error=).
  async function finishSignIn(params) {
    const pending = JSON.parse(sessionStorage.getItem(PKCE_KEY) || 'null');
    sessionStorage.removeItem(PKCE_KEY);
    // The code must not stay in the address bar, the history or a bookmark.
    const back = pending && pending.page !== 'approvals' && PAGES.includes(pending.page)
      ? new URL(pageUrl(pending.page), location.href).pathname : location.pathname;
    history.replaceState(null, '', back + ((pending && pending.hash) || ''));
    mode = pageOf(location.pathname);
    if (params.get('error')) {
      throw new Error(`The identity provider refused the sign-in: ${params.get('error_description') || params.get('error')}`);
    }
    if (!pending || params.get('state') !== pending.state) {
      throw new Error('The sign-in answer does not match a sign-in started in this tab. Sign in again.');
    }
    // RFC 9207: an IdP that names itself must be the one this page asked.
    if (params.has('iss') && params.get('iss') !== config.issuer) {
      throw new Error('The sign-in answer comes from another identity provider. Sign in again.');
    }
    const response = await fetch(config.token_endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        code: params.get('code') || '',
        redirect_uri: redirectUri(),
        client_id: config.client_id,
        code_verifier: pending.verifier,
      }),
      credentials: 'omit',
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(`Sign-in failed: ${body.error_description || body.error || response.status}`);
    }
    const idClaims = body.id_token ? claimsOf(body.id_token) : null;
    if (body.id_token && (!idClaims || idClaims.nonce !== pending.nonce)) {
      throw new Error('Sign-in failed: the ID token does not carry this sign-in\'s nonce.');
    }
    // The access token when it is a JWT (the control plane verifies it);
    // otherwise the ID token, whose audience is this page's client id.
    const token = body.access_token && body.access_token.split('.').length === 3
      ? body.access_token : body.id_token;
    if (!token) throw new Error('Sign-in failed: the identity provider sent no usable token.');
    const claims = claimsOf(token) || {};
    const exp = claims.exp || (Date.now() / 1000 + (body.expires_in || 300));
    sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token, exp }));
  }

  function loadSession() {
    const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || 'null');
    if (!saved || !saved.token) return null;
    if (saved.exp && saved.exp * 1000 <= Date.now()) {
      sessionStorage.removeItem(TOKEN_KEY);
      showAlert('Your session has expired. Sign in again.');
      return null;
    }
    return { token: saved.token, claims: claimsOf(saved.token) || {} };
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(PKCE_KEY);
    session = null;
    me = null;
    forgetKey();
    clearInterval(refreshTimer);
    showAlert(message || '');
    setStatus(message ? '' : 'Signed out.');
    render();
  }

  // ---- the API -------------------------------------------------------------

  const MESSAGES = {
    self_approval: 'You cannot decide your own request: another approver must.',
    not_an_approver: 'You are not one of the approvers of this request.',
    already_decided: 'This request has already been decided.',
    approval_expired: 'This request expired before it was decided.',
    not_found: 'There is no such request, or it is not one you may see.',
    approval_not_found: 'There is no such request, or it is not one you may see.',
    auditor_required: 'Recorded sessions are for auditors only.',
    session_not_found: 'There is no recorded session with this id.',
  };

  // `messages`: friendlier words for the API's error codes, by view.
  async function api(method, path, body, messages = MESSAGES) {
    const response = await fetch(path, {
      method,
      headers: Object.assign(
        { authorization: `Bearer ${session.token}` },
        body ? { 'content-type': 'application/json' } : {},
      ),
      body: body ? JSON.stringify(body) : undefined,
      credentials: 'omit',
      cache: 'no-store',
    });
    const data = await response.json().catch(() => ({}));
    if (response.status === 401) {
      signOut('Your session is no longer accepted. Sign in again.');
      throw Object.assign(new Error('signed out'), { silent: true });
    }
    if (!response.ok) {
      const err = (data && data.error) || {};
      const known = messages[err.code];
      const detail = err.message || `HTTP ${response.status}`;
      throw Object.assign(new Error(known ? `${known} (${detail})` : detail), { code: err.code });
    }
    return data;
  }

  function reportError(e) {
    if (!e.silent) showAlert(e.message);
  }

  // ---- views ---------------------------------------------------------------

  function isMine(a) {
    // The same person: the same subject at the same issuer.
    return !!session && a.subject === session.claims.sub &&
      (!a.issuer || a.issuer === session.claims.iss);
  }

  function card(a) {
    const li = $('card-template').content.firstElementChild.cloneNode(true);
    li.dataset.id = a.id;
    const link = li.querySelector('.card-link');
    link.href = `#${a.id}`;
    text(li.querySelector('.c-rule'), a.rule);
    const status = li.querySelector('.c-status');
    text(status, a.status);
    status.classList.add(a.status);
    text(li.querySelector('.c-mode'), a.mode);
    text(li.querySelector('.c-requester'), requester(a));
    text(li.querySelector('.c-model'), `${a.model} via ${a.provider}`);
    const when = li.querySelector('.c-time');
    if (a.status === 'pending') {
      when.append('requested ', timeEl(a.created_at), ', expires ', timeEl(a.expires_at));
    } else {
      when.append(`${a.status} by `, a.decided_by || '\u2014', ' ', timeEl(a.decided_at || a.consumed_at || a.expires_at));
      if (a.reason) when.append(` \u2014 \u201c${a.reason}\u201d`);
    }
    text(li.querySelector('.c-prompt'), (a.masked_prompt || '').slice(0, 300));
    return li;
  }

  async function showList() {
    $('detail').hidden = true;
    $('queue').hidden = false;
    $('tab-pending').setAttribute('aria-selected', String(view === 'pending'));
    $('tab-history').setAttribute('aria-selected', String(view === 'history'));
    setStatus('Loading\u2026');
    const status = view === 'pending' ? 'pending' : 'all';
    const data = await api('GET', `/v1/approvals?status=${status}`);
    const all = Array.isArray(data.approvals) ? data.approvals : [];
    const list = $('list');
    const empty = $('list-empty');
    if (view === 'pending') {
      const pending = all.filter((a) => a.status === 'pending');
      const toDecide = pending.filter((a) => !isMine(a));
      const own = pending.filter(isMine);
      $('list-title').textContent = 'Waiting for your decision';
      list.replaceChildren(...toDecide.map(card));
      empty.textContent = 'Nothing waits for your decision.';
      empty.hidden = toDecide.length > 0;
      $('own-list').replaceChildren(...own.map(card));
      $('own-block').hidden = own.length === 0;
      $('pending-count').textContent = toDecide.length ? String(toDecide.length) : '';
    } else {
      const decided = all.filter((a) => a.status !== 'pending')
        .sort((x, y) => String(y.decided_at || y.created_at).localeCompare(String(x.decided_at || x.created_at)));
      $('list-title').textContent = 'Decided and expired requests';
      list.replaceChildren(...decided.map(card));
      empty.textContent = 'No request has been decided yet.';
      empty.hidden = decided.length > 0;
      $('own-block').hidden = true;
    }
    setStatus(`Updated ${new Date().toLocaleTimeString()}.`);
  }

  async function showDetail(id) {
    $('queue').hidden = true;
    $('detail').hidden = false;
    setStatus('Loading\u2026');
    const a = await api('GET', `/v1/approvals/${encodeURIComponent(id)}`);
    $('detail').dataset.id = a.id;
    $('detail').dataset.status = a.status;
    text($('d-rule'), a.rule);
    const status = $('d-status');
    status.className = `badge ${a.status}`;
    text(status, a.status);
    text($('d-requester'), requester(a));
    text($('d-groups'), (a.groups || []).join(', '));
    text($('d-model'), a.model);
    text($('d-provider'), [a.provider, a.route].filter(Boolean).join(' \u2014 '));
    text($('d-mode'), a.mode === 'hold'
      ? 'hold (the request is waiting in the gateway)'
      : a.mode === 'ticket' ? 'ticket (the requester retries once approved)' : a.mode);
    setTime($('d-created'), a.created_at);
    setTime($('d-expires'), a.expires_at);
    text($('d-approvers'), (a.approvers || []).join(', '));
    text($('d-policy'), a.policy_version);
    text($('d-id'), a.id);
    // The prompt as the gateway masked it, as text: markup in it stays inert.
    $('d-prompt').textContent = a.masked_prompt || '';
    const decided = a.status !== 'pending' && a.status !== 'expired';
    $('d-decision').hidden = !decided;
    if (decided) {
      text($('d-decided-by'), a.decided_by);
      setTime($('d-decided-at'), a.decided_at);
      text($('d-reason'), a.reason);
    }
    const mine = isMine(a);
    $('d-own').hidden = !(mine && a.status === 'pending');
    $('decide').hidden = !(a.status === 'pending' && !mine);
    $('reason').value = '';
    setStatus('');
    // Screen readers and keyboards start at the request just opened.
    if (!$('detail').contains(document.activeElement)) $('d-title').focus();
  }

  async function decide(action) {
    const id = $('detail').dataset.id;
    const reason = $('reason').value.trim();
    if (action === 'deny' && !reason) {
      showAlert('A reason is required to deny a request.');
      $('reason').focus();
      return;
    }
    showAlert('');
    for (const b of [$('approve'), $('deny')]) b.disabled = true;
    try {
      const a = await api('POST', `/v1/approvals/${encodeURIComponent(id)}/${action}`, { reason });
      setStatus(`${a.status === 'approved' ? 'Approved' : 'Denied'}: ${a.rule} for ${a.subject}.`);
      await showDetail(id);
    } catch (e) {
      reportError(e);
    } finally {
      for (const b of [$('approve'), $('deny')]) b.disabled = false;
    }
  }

  async function route() {
    if (!session) return;
    let hash = location.hash.slice(1);
    try { hash = decodeURIComponent(hash); } catch (e) { /* keep it as it is */ }
    try {
      if (mode === 'keys') {
        await showKeys();
      } else if (mode === 'sessions') {
        if (hash) await showSession(hash);
        else await showSessions();
      } else if (/^apr_[A-Za-z0-9_-]+$/.test(hash)) {
        await showDetail(hash);
      } else {
        if (hash === 'history') view = 'history';
        else if (hash === '' || hash === 'pending') view = 'pending';
        await showList();
      }
    } catch (e) {
      setStatus('');
      reportError(e);
    }
  }

  function render() {
    document.title = `Warden ${mode}`;
    $('home').textContent = document.title;
    for (const page of PAGES) {
      const link = $(`nav-${page}`);
      link.href = pageUrl(page);
      if (page === mode) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
      $(`signed-out-${page}`).hidden = page !== mode;
    }
    $('signed-out').hidden = !!session;
    $('who').hidden = !session;
    $('nav').hidden = !session;
    $('queue').hidden = true;
    $('detail').hidden = true;
    $('sessions').hidden = true;
    $('session').hidden = true;
    $('keys').hidden = true;
    if (!session) return;
    const c = session.claims;
    $('who-name').textContent = c.email && c.email !== c.sub ? `${c.sub} (${c.email})` : (c.sub || 'unknown');
    clearInterval(refreshTimer);
    if (mode !== 'approvals') {
      route();
      return;
    }
    // Keep the queue fresh while it is on screen.
    refreshTimer = setInterval(() => {
      if (!document.hidden && session && !$('queue').hidden) showList().catch(reportError);
    }, REFRESH_MS);
    route();
  }

  // ---- recorded sessions (auditors) ----------------------------------------

  const SESSIONS_PAGE = 50;
  // The list's filters and where its pages start (before_seq; null: newest).
  const listing = { filters: {}, cursors: [null], next: null };
  let chainChecked = false;

  // An absolute <time>: the local date and time, the relative one as its title.
  function absTimeEl(value) {
    const d = toDate(value);
    if (!d) return document.createTextNode(value ? String(value) : '\u2014');
    const t = document.createElement('time');
    t.dateTime = d.toISOString();
    t.textContent = d.toLocaleString();
    t.title = relative(d);
    return t;
  }

  function setAbsTime(el, value) {
    el.replaceChildren(absTimeEl(value));
  }

  function pretty(value) {
    try {
      return JSON.stringify(value, null, 2);
    } catch (e) {
      return String(value);
    }
  }

  // A JSON text (tool arguments) pretty-printed when it parses, as it is otherwise.
  function prettyText(text) {
    if (typeof text !== 'string') return pretty(text);
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (e) {
      return text;
    }
  }

  function decisionClass(decision) {
    if (['allowed', 'masked', 'approved'].includes(decision)) return 'ok';
    if (decision === 'approval_pending') return 'pending';
    if (decision) return 'bad';
    return '';
  }

  function setBadge(el, decision) {
    el.classList.remove('ok', 'bad', 'pending');
    el.classList.add('badge');
    if (decisionClass(decision)) el.classList.add(decisionClass(decision));
    text(el, decision);
  }

  // "personal-data:mask:2,merger:observe:log_only:1" -> [{name, action, count, observed}].
  // Names may hold colons: the fields are read from the right.
  function parseRules(rules) {
    if (typeof rules !== 'string' || !rules.trim()) return [];
    return rules.split(',').map((item) => item.trim()).filter(Boolean).map((item) => {
      const parts = item.split(':');
      let count = null;
      if (parts.length > 1 && /^\d+$/.test(parts[parts.length - 1])) count = Number(parts.pop());
      const action = parts.length > 1 ? parts.pop() : '';
      let observed = false;
      if (parts.length > 1 && parts[parts.length - 1] === 'observe') {
        parts.pop();
        observed = true;
      }
      return { name: parts.join(':'), action, count, observed };
    });
  }

  function rulesSummary(rules) {
    return parseRules(rules).map((r) =>
      `${r.name} (${r.observed ? 'observed: ' : ''}${r.action}${r.count != null ? ` \u00d7${r.count}` : ''})`).join(', ');
  }

  function usageText(usage) {
    let u = usage;
    if (typeof u === 'string') {
      try { u = JSON.parse(u); } catch (e) { return u; }
    }
    if (u == null) return '';
    if (typeof u !== 'object') return String(u);
    // The counts, and of their breakdowns (…_details) the parts that are not zero.
    const out = [];
    for (const [key, value] of Object.entries(u)) {
      if (value != null && typeof value === 'object') {
        for (const [k, v] of Object.entries(value)) {
          if (v != null && typeof v !== 'object' && v !== 0) out.push(`${key}.${k}: ${v}`);
        }
      } else if (value != null) {
        out.push(`${key}: ${value}`);
      }
    }
    return out.join(' \u00b7 ');
  }

  // ---- the conversation: provider shapes to messages of blocks ---------------
  // A message is {role, blocks, meta}; a block is {kind: 'text'|'code'|'note', text, label}.

  const block = (kind, value, label) => ({ kind, text: value == null ? '' : String(value), label });

  function partBlocks(part, blocks) {
    if (part == null) return;
    if (typeof part === 'string') return void blocks.push(block('text', part));
    if (typeof part !== 'object') return void blocks.push(block('text', String(part)));
    switch (part.type) {
      case 'text': case 'input_text': case 'output_text':
        return void blocks.push(block('text', part.text));
      case 'refusal':
        return void blocks.push(block('note', `Refused: ${part.refusal || ''}`));
      case 'image_url': case 'image': case 'input_image':
        return void blocks.push(block('note', '[an image]'));
      case 'input_audio': case 'audio':
        return void blocks.push(block('note', '[audio]'));
      case 'file': case 'input_file': case 'document':
        return void blocks.push(block('note', '[a file]'));
      case 'tool_use': case 'server_tool_use':
        return void blocks.push(block('code', pretty(part.input), `tool call: ${part.name || '?'}`));
      case 'tool_result': {
        blocks.push(block('note', `tool result${part.tool_use_id ? ` for ${part.tool_use_id}` : ''}${part.is_error ? ' (an error)' : ''}:`));
        return void contentBlocks(part.content, blocks);
      }
      case 'thinking':
        return void blocks.push(block('code', part.thinking, 'thinking'));
      case 'redacted_thinking':
        return void blocks.push(block('note', '[redacted thinking]'));
      default:
        if (typeof part.text === 'string') return void blocks.push(block('text', part.text));
        blocks.push(block('code', pretty(part), part.type ? String(part.type) : 'content'));
    }
  }

  function contentBlocks(content, blocks) {
    if (Array.isArray(content)) content.forEach((part) => partBlocks(part, blocks));
    else partBlocks(content, blocks);
    return blocks;
  }

  // One chat message (OpenAI chat, Anthropic messages, a Responses message item).
  function chatMessage(m, fallbackRole) {
    if (m == null || typeof m !== 'object') {
      return { role: fallbackRole || 'message', blocks: contentBlocks(m, []) };
    }
    const blocks = [];
    let role = m.role || fallbackRole || 'message';
    if (role === 'tool') {
      blocks.push(block('note', `tool result${m.tool_call_id ? ` for ${m.tool_call_id}` : ''}:`));
    }
    contentBlocks(m.content, blocks);
    for (const call of Array.isArray(m.tool_calls) ? m.tool_calls : []) {
      const fn = (call && call.function) || {};
      blocks.push(block('code', prettyText(fn.arguments), `tool call: ${fn.name || (call && call.type) || '?'}`));
    }
    if (m.function_call && typeof m.function_call === 'object') {
      blocks.push(block('code', prettyText(m.function_call.arguments), `function call: ${m.function_call.name || '?'}`));
    }
    if (m.refusal) blocks.push(block('note', `Refused: ${m.refusal}`));
    if (m.name && typeof m.name === 'string') role = `${role} (${m.name})`;
    return { role, blocks };
  }

  // A Responses API input or output item.
  function responsesItem(item, fallbackRole) {
    if (item == null || typeof item !== 'object') return chatMessage(item, fallbackRole);
    switch (item.type) {
      case 'function_call': case 'custom_tool_call':
        return { role: 'assistant', blocks: [block('code', prettyText(item.arguments != null ? item.arguments : item.input), `tool call: ${item.name || '?'}`)] };
      case 'function_call_output': case 'custom_tool_call_output':
        return { role: 'tool', blocks: contentBlocks(item.output, [block('note', `tool result${item.call_id ? ` for ${item.call_id}` : ''}:`)]) };
      case 'reasoning': {
        const summary = (Array.isArray(item.summary) ? item.summary : []).map((s) => (s && s.text) || '').filter(Boolean);
        return { role: 'reasoning', blocks: summary.length ? summary.map((t) => block('text', t)) : [block('note', '[reasoning]')] };
      }
      case 'message': case undefined:
        if (item.role || item.content !== undefined) return chatMessage(item, fallbackRole);
        return { role: fallbackRole || 'item', blocks: [block('code', pretty(item))] };
      default:
        return { role: String(item.type), blocks: [block('code', pretty(item))] };
    }
  }

  // The request as sent upstream, as messages; null when its shape is unknown.
  function requestMessages(req) {
    if (req == null || typeof req !== 'object' || Array.isArray(req)) return null;
    const out = [];
    let known = false;
    if (req.system != null) { known = true; out.push({ role: 'system', blocks: contentBlocks(req.system, []) }); }
    if (req.instructions != null) { known = true; out.push({ role: 'instructions', blocks: contentBlocks(req.instructions, []) }); }
    if (Array.isArray(req.messages)) {
      known = true;
      req.messages.forEach((m) => out.push(chatMessage(m, 'user')));
    }
    if (req.input != null) {
      known = true;
      if (Array.isArray(req.input) && req.input.some((i) => i && typeof i === 'object')) {
        req.input.forEach((item) => out.push(responsesItem(item, 'user')));
      } else {
        const inputs = Array.isArray(req.input) ? req.input : [req.input];
        out.push({ role: 'input', blocks: inputs.map((i) => block('text', typeof i === 'string' ? i : pretty(i))) });
      }
    }
    if (req.prompt != null) {
      known = true;
      const prompts = Array.isArray(req.prompt) ? req.prompt : [req.prompt];
      out.push({ role: 'prompt', blocks: prompts.map((p) => block('text', typeof p === 'string' ? p : pretty(p))) });
    }
    if (!known) return null;
    const tools = (Array.isArray(req.tools) ? req.tools : [])
      .map((t) => t && ((t.function && t.function.name) || t.name || t.type)).filter(Boolean);
    if (tools.length && out.length) out[0].meta = `tools offered: ${tools.join(', ')}`;
    return out;
  }

  // The answer as recorded: {messages, note, stream}; messages null when its shape is unknown.
  function responseMessages(resp) {
    if (resp == null) return { messages: [] };
    if (typeof resp === 'string') return { messages: [{ role: 'assistant', blocks: [block('text', resp)] }] };
    if (typeof resp !== 'object' || Array.isArray(resp)) return { messages: null };
    if (resp.omitted != null) return { messages: [], note: `The answer was not recorded: ${resp.omitted}` };
    if (resp.stream || Array.isArray(resp.channels)) {
      const s = resp.stream || {};
      const channels = (Array.isArray(resp.channels) ? resp.channels : [])
        .filter((c) => c && typeof c === 'object')
        .map((c, i) => ({ c, i, key: typeof c.index === 'number' ? c.index : Number(c.index) }))
        .sort((a, b) => ((a.key - b.key) || (a.i - b.i)));
      const blocks = channels.map(({ c }) => c.kind === 'tool_arguments'
        ? block('code', prettyText(c.text), 'tool arguments')
        : c.kind === 'text' || c.kind == null ? block('text', c.text) : block('code', c.text, String(c.kind)));
      if (!blocks.length) blocks.push(block('note', 'The stream carried no text.'));
      const events = typeof s.events === 'number' ? s.events : '?';
      const meta = `streamed: ${events} event${events === 1 ? '' : 's'}${s.api ? ` (${s.api})` : ''}${s.truncated ? ', truncated: the record holds only the start' : ''}`;
      return { messages: [{ role: 'assistant', blocks, meta, streamed: true }], stream: s };
    }
    if (Array.isArray(resp.choices)) {
      const many = resp.choices.length > 1;
      const messages = resp.choices.map((c, i) => {
        let m;
        if (c && c.message) m = chatMessage(c.message, 'assistant');
        else if (c && typeof c.text === 'string') m = { role: 'assistant', blocks: [block('text', c.text)] };
        else m = { role: 'assistant', blocks: [block('code', pretty(c))] };
        if (many) m.role = `${m.role} (choice ${c && c.index != null ? c.index : i})`;
        if (c && c.finish_reason) m.meta = `finish reason: ${c.finish_reason}`;
        return m;
      });
      return { messages };
    }
    if (Array.isArray(resp.content)) {
      const m = chatMessage({ role: resp.role || 'assistant', content: resp.content }, 'assistant');
      if (resp.stop_reason) m.meta = `stop reason: ${resp.stop_reason}`;
      return { messages: [m] };
    }
    if (Array.isArray(resp.output)) {
      return { messages: resp.output.map((item) => responsesItem(item, 'assistant')) };
    }
    if (resp.error != null) {
      return { messages: [{ role: 'error', blocks: [block('code', pretty(resp.error))] }] };
    }
    if (Array.isArray(resp.data)) {
      return { messages: [], note: `The answer holds ${resp.data.length} item(s) of data (embeddings, say): not shown.` };
    }
    return { messages: null };
  }

  function messageEl(m, kind) {
    const li = document.createElement('li');
    const role = String(m.role || 'message');
    li.className = `msg ${kind}`;
    li.dataset.role = role;
    const head = document.createElement('div');
    head.className = 'msg-role';
    head.textContent = role;
    li.append(head);
    for (const b of m.blocks || []) {
      let el;
      if (b.kind === 'code') {
        el = document.createElement('figure');
        el.className = 'msg-code';
        if (b.label) {
          const cap = document.createElement('figcaption');
          cap.textContent = b.label;
          el.append(cap);
        }
        const pre = document.createElement('pre');
        pre.tabIndex = 0;
        pre.textContent = b.text;
        el.append(pre);
      } else {
        el = document.createElement('p');
        el.className = b.kind === 'note' ? 'msg-note' : 'msg-text';
        el.textContent = b.text;
      }
      li.append(el);
    }
    if (m.meta) {
      const meta = document.createElement('p');
      meta.className = m.streamed ? 'msg-meta stream-info' : 'msg-meta';
      meta.textContent = m.meta;
      li.append(meta);
    }
    return li;
  }

  function rawMessage(role, value) {
    return { role, blocks: [block('code', pretty(value), 'not a shape this page knows: the JSON as recorded')] };
  }

  function renderConversation(r) {
    const list = $('s-messages');
    const items = [];
    const notes = [];
    const forwarded = ['allowed', 'masked', 'approved'].includes(r.decision);
    if (r.record === 'metadata' || r.record === 'off') {
      notes.push('The policy recorded metadata only (record: metadata): no prompt or answer was kept.');
    } else {
      if (r.request == null) {
        notes.push(forwarded
          ? 'No request was recorded.'
          : 'The request is not kept when the gateway refused it: it may hold the value that refused it.');
      } else {
        const asked = requestMessages(r.request);
        if (asked) asked.forEach((m) => items.push(messageEl(m, 'asked')));
        else items.push(messageEl(rawMessage('request', r.request), 'asked'));
      }
      const answer = responseMessages(r.response);
      if (answer.note) notes.push(answer.note);
      if (answer.messages === null) items.push(messageEl(rawMessage('answer', r.response), 'answer'));
      else answer.messages.forEach((m) => items.push(messageEl(m, 'answer')));
      if (r.response == null && forwarded) notes.push('No answer was recorded.');
    }
    list.replaceChildren(...items);
    $('s-note').textContent = notes.join(' ');
    $('s-note').hidden = notes.length === 0;
  }

  function renderRules(rules) {
    const parsed = parseRules(rules);
    const table = $('s-rules');
    const rows = parsed.map((r) => {
      const tr = document.createElement('tr');
      const cells = [r.name, r.observed ? `${r.action} (observed only)` : r.action, r.count == null ? '' : String(r.count)];
      for (const value of cells) {
        const td = document.createElement('td');
        td.textContent = value;
        tr.append(td);
      }
      return tr;
    });
    table.tBodies[0].replaceChildren(...rows);
    table.hidden = rows.length === 0;
    $('s-no-rules').hidden = rows.length > 0;
  }

  async function renderApproval(id) {
    $('s-approval').hidden = !id;
    $('sa-error').hidden = true;
    $('sa-facts').hidden = true;
    if (!id) return;
    try {
      const a = await api('GET', `/v1/approvals/${encodeURIComponent(id)}`);
      const link = document.createElement('a');
      link.href = `${pageUrl('approvals')}#${encodeURIComponent(a.id)}`;
      link.textContent = a.id;
      $('sa-id').replaceChildren(link);
      const status = $('sa-status');
      status.className = `badge ${a.status}`;
      text(status, a.status);
      text($('sa-rule'), a.rule);
      text($('sa-mode'), a.mode);
      text($('sa-requester'), requester(a));
      setAbsTime($('sa-created'), a.created_at);
      text($('sa-decided-by'), a.decided_by
        ? (a.decided_by_email && a.decided_by_email !== a.decided_by ? `${a.decided_by} <${a.decided_by_email}>` : a.decided_by)
        : '');
      setAbsTime($('sa-decided-at'), a.decided_at);
      text($('sa-reason'), a.reason);
      text($('sa-approvers'), (a.approvers || []).join(', '));
      $('sa-facts').hidden = false;
    } catch (e) {
      if (e.silent) return;
      const el = $('sa-error');
      el.textContent = `Approval ${id} cannot be read: ${e.message}`;
      el.hidden = false;
    }
  }

  async function showSession(id) {
    $('sessions').hidden = true;
    $('session').hidden = false;
    setStatus('Loading\u2026');
    const data = await api('GET', `/v1/sessions/${encodeURIComponent(id)}`);
    const r = data.record && typeof data.record === 'object' && !Array.isArray(data.record) ? data.record : {};
    $('session').dataset.id = data.id || id;
    text($('s-id'), data.id || id);
    setBadge($('s-decision'), r.decision || data.decision);
    setBadge($('s-fact-decision'), r.decision || data.decision);
    text($('s-reason'), r.reason);
    const version = r.policy_version;
    text($('s-policy'), version === 0 ? '0 (the Envoy configuration\u2019s own policy)' : version);
    text($('s-status'), r.status);
    text($('s-usage'), usageText(r.usage));
    text($('s-provider'), r.provider);
    text($('s-model'), r.model);
    text($('s-route'), r.route);
    text($('s-subject'), r.subject || data.subject);
    text($('s-groups'), Array.isArray(r.groups) ? r.groups.join(', ') : r.groups);
    text($('s-issuer'), r.issuer);
    setAbsTime($('s-time'), r.time);
    setAbsTime($('s-received'), data.received_at);
    text($('s-record'), r.record);
    text($('s-seq'), data.seq);
    text($('s-hash'), data.hash);
    text($('s-prev-hash'), data.prev_hash);
    renderRules(r.rules);
    renderConversation(r);
    $('s-raw-json').textContent = pretty(data.record);
    $('s-raw').open = false;
    await renderApproval(typeof r.approval_id === 'string' && r.approval_id ? r.approval_id : null);
    setStatus('');
    if (!$('session').contains(document.activeElement)) $('s-title').focus();
  }

  function sessionRow(s) {
    const tr = $('session-row-template').content.firstElementChild.cloneNode(true);
    tr.dataset.id = s.id;
    const link = tr.querySelector('.r-link');
    link.href = `#${encodeURIComponent(s.id)}`;
    link.querySelector('.r-time').replaceChildren(absTimeEl(s.time || s.received_at));
    text(tr.querySelector('.r-subject'), s.subject);
    setBadge(tr.querySelector('.r-decision'), s.decision);
    text(tr.querySelector('.r-model'), [s.model, s.provider && `via ${s.provider}`].filter(Boolean).join(' '));
    text(tr.querySelector('.r-route'), s.route);
    text(tr.querySelector('.r-rules'), rulesSummary(s.rules));
    text(tr.querySelector('.r-status'), s.status);
    return tr;
  }

  // A datetime-local value (the browser's time zone) as RFC 3339 UTC.
  function isoOf(local) {
    if (!local) return '';
    const d = new Date(local);
    return isNaN(d.getTime()) ? '' : d.toISOString();
  }

  function readFilters() {
    return {
      subject: $('f-subject').value.trim(),
      decision: $('f-decision').value,
      since: isoOf($('f-since').value),
      until: isoOf($('f-until').value),
    };
  }

  async function verifyChain() {
    const status = $('chain-status');
    const problems = $('chain-problems');
    status.className = 'chain-status';
    status.textContent = 'Verifying the hash chain\u2026';
    $('verify').disabled = true;
    try {
      const report = await api('GET', '/v1/sessions/verify');
      chainChecked = true;
      const problemList = Array.isArray(report.problems) ? report.problems : [];
      if (report.ok) {
        status.classList.add('ok');
        status.textContent = `Hash chain verified: ${report.checked} record${report.checked === 1 ? '' : 's'}, intact (checked ${new Date().toLocaleTimeString()}).`;
      } else {
        status.classList.add('bad');
        status.textContent = `Hash chain broken: ${problemList.length} problem${problemList.length === 1 ? '' : 's'} in ${report.checked} records read.`;
      }
      problems.replaceChildren(...problemList.map((p) => {
        const li = document.createElement('li');
        li.textContent = `${p.kind} at record ${p.seq}: ${p.message}`;
        return li;
      }));
      problems.hidden = problemList.length === 0;
    } catch (e) {
      status.classList.add('bad');
      status.textContent = e.silent ? '' : `The chain could not be verified: ${e.message}`;
    } finally {
      $('verify').disabled = false;
    }
  }

  async function showSessions() {
    $('session').hidden = true;
    $('sessions').hidden = false;
    if (!chainChecked) verifyChain();
    setStatus('Loading\u2026');
    const params = new URLSearchParams({ limit: String(SESSIONS_PAGE) });
    for (const [key, value] of Object.entries(listing.filters)) if (value) params.set(key, value);
    const before = listing.cursors[listing.cursors.length - 1];
    if (before != null) params.set('before_seq', String(before));
    const data = await api('GET', `/v1/sessions?${params}`);
    const rows = Array.isArray(data.sessions) ? data.sessions : [];
    $('sessions-list').replaceChildren(...rows.map(sessionRow));
    $('sessions-table').hidden = rows.length === 0;
    const filtered = Object.values(listing.filters).some(Boolean);
    const empty = $('sessions-empty');
    empty.textContent = filtered ? 'No recorded session matches these filters here.' : 'No session has been recorded yet.';
    empty.hidden = rows.length > 0;
    listing.next = typeof data.next_before_seq === 'number' ? data.next_before_seq : null;
    $('older').hidden = listing.next == null;
    $('newer').hidden = listing.cursors.length <= 1;
    $('scan-note').textContent = filtered && listing.next != null && rows.length < SESSIONS_PAGE
      ? `Searched ${data.scanned} records; older ones may match too.` : '';
    setStatus(`Updated ${new Date().toLocaleTimeString()}.`);
  }

  function wireSessions() {
    const reload = () => { showAlert(''); showSessions().catch(reportError); };
    $('filters').addEventListener('submit', (event) => {
      event.preventDefault();
      listing.filters = readFilters();
      listing.cursors = [null];
      if (location.hash) location.hash = ''; else reload();
    });
    $('f-clear').addEventListener('click', () => {
      $('filters').reset();
      listing.filters = {};
      listing.cursors = [null];
      reload();
    });
    $('older').addEventListener('click', () => {
      if (listing.next == null) return;
      listing.cursors.push(listing.next);
      reload();
    });
    $('newer').addEventListener('click', () => {
      if (listing.cursors.length > 1) listing.cursors.pop();
      reload();
    });
    $('verify').addEventListener('click', () => verifyChain());
    $('s-back').addEventListener('click', (event) => {
      event.preventDefault();
      history.pushState(null, '', location.pathname);
      showAlert('');
      route();
    });
  }

  // ---- machine keys ----------------------------------------------------------
  // A key is in the page from the answer that issued it until "Done": only as
  // the text of #kr-key (no variable keeps it, nothing stores or logs it).

  const KEY_MESSAGES = {
    not_found: 'There is no such key, or it is not one of yours.',
  };
  // The longest life the API gives a key of one's own; admins may go further.
  const SELF_MAX_DAYS = 90;
  const ADMIN_MAX_DAYS = 366;
  // The key the confirmation panel is about: {id, name, action, opener}.
  let keyAction = null;

  const words = (value) => value.split(/[\s,]+/).map((w) => w.trim()).filter(Boolean);

  function keyShown() {
    return !$('key-reveal').hidden;
  }

  // Shows a key just issued: once, until "Done".
  function revealKey(issued) {
    $('kr-key').textContent = issued.key;
    text($('kr-name'), issued.name);
    text($('kr-owner'), issued.owner);
    $('kr-copied').textContent = '';
    $('key-reveal').hidden = false;
    $('kr-title').focus();
  }

  // Takes the key out of the page.
  function forgetKey() {
    const shown = $('kr-key');
    const selection = window.getSelection && window.getSelection();
    if (selection && selection.rangeCount && shown.contains(selection.anchorNode)) selection.removeAllRanges();
    shown.textContent = '';
    $('kr-name').textContent = '';
    $('kr-owner').textContent = '';
    $('kr-copied').textContent = '';
    $('key-reveal').hidden = true;
  }

  // Refuses to start something that would put another key in its place.
  function keyStillShown() {
    if (!keyShown()) return false;
    showAlert('Copy the key shown and press Done first: it will not be shown again.');
    $('kr-done').focus();
    return true;
  }

  async function copyKey() {
    const el = $('kr-key');
    const done = (message) => { $('kr-copied').textContent = message; };
    try {
      await navigator.clipboard.writeText(el.textContent);
      done('Copied to the clipboard.');
    } catch (e) {
      // No clipboard access (an insecure context, a refused permission):
      // select the key so that Ctrl+C (or the menu) copies it.
      const range = document.createRange();
      range.selectNodeContents(el);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      done('The page may not write to the clipboard: the key is selected, copy it with Ctrl+C.');
      el.focus();
    }
  }

  function keyStatusClass(status) {
    return status === 'live' ? 'ok' : status === 'revoked' ? 'bad' : 'expired';
  }

  function keyRow(k) {
    const tr = $('key-row-template').content.firstElementChild.cloneNode(true);
    tr.dataset.id = k.id;
    tr.dataset.status = k.status;
    text(tr.querySelector('.k-id code'), k.id);
    if (k.replaces) tr.querySelector('.k-replaces').textContent = ` replaces ${k.replaces}`;
    text(tr.querySelector('.k-name'), k.name);
    text(tr.querySelector('.k-owner'), k.owner);
    text(tr.querySelector('.k-groups'), (k.groups || []).join(', '));
    const models = tr.querySelector('.k-models');
    const anyModel = !(Array.isArray(k.models) && k.models.length);
    models.textContent = anyModel ? 'any its groups allow' : k.models.join(', ');
    models.classList.toggle('hint', anyModel);
    const status = tr.querySelector('.k-status');
    status.classList.add(keyStatusClass(k.status));
    text(status, k.status);
    if (k.status === 'revoked') {
      const revoked = tr.querySelector('.k-revoked');
      revoked.append(` by ${k.revoked_by || '\u2014'} `, absTimeEl(new Date(k.revoked_ms).toISOString()));
    }
    setAbsTime(tr.querySelector('.k-expires'), new Date(k.expires_ms).toISOString());
    setAbsTime(tr.querySelector('.k-created'), new Date(k.created_ms).toISOString());
    text(tr.querySelector('.k-created-by'), k.created_by);
    const rotate = tr.querySelector('.k-rotate');
    const revoke = tr.querySelector('.k-revoke');
    if (k.status === 'live') {
      // Several rows have these buttons: the name says which key each is for.
      rotate.setAttribute('aria-label', `Rotate ${k.name} (${k.id})`);
      revoke.setAttribute('aria-label', `Revoke ${k.name} (${k.id})`);
      rotate.addEventListener('click', () => askKeyAction('rotate', k, rotate));
      revoke.addEventListener('click', () => askKeyAction('revoke', k, revoke));
    } else {
      rotate.remove();
      revoke.remove();
    }
    return tr;
  }

  // Who the caller is: the owner field and the longest life are for admins.
  async function loadMe() {
    if (me) return;
    const answer = await api('GET', '/v1/whoami');
    me = answer.identity || {};
    $('k-owner-field').hidden = !me.admin;
    const days = $('k-days');
    days.max = String(me.admin ? ADMIN_MAX_DAYS : SELF_MAX_DAYS);
    const groups = Array.isArray(me.groups) ? me.groups : [];
    $('k-groups-mine').textContent = me.admin ? '; any group (you are an admin)'
      : groups.length ? `; yours: ${groups.join(', ')}` : '; your token is in no group';
  }

  async function showKeys() {
    $('keys').hidden = false;
    setStatus('Loading\u2026');
    await loadMe();
    const data = await api('GET', '/v1/keys', undefined, KEY_MESSAGES);
    const keys = (Array.isArray(data.keys) ? data.keys : []).slice()
      .sort((a, b) => (b.created_ms - a.created_ms) || String(a.id).localeCompare(String(b.id)));
    $('keys-list').replaceChildren(...keys.map(keyRow));
    $('keys-table').hidden = keys.length === 0;
    const empty = $('keys-empty');
    empty.textContent = me && me.admin ? 'No key has been issued yet.' : 'You hold no key yet.';
    empty.hidden = keys.length > 0;
    setStatus(`Updated ${new Date().toLocaleTimeString()}.`);
  }

  async function issueKey() {
    if (keyStillShown()) return;
    showAlert('');
    setStatus('');
    const name = $('k-name').value.trim();
    if (!name) {
      showAlert('A key needs a name: what it is for (shown in the list).');
      $('k-name').focus();
      return;
    }
    const days = $('k-days');
    if (days.validity.badInput || (days.value !== '' && !/^\d+$/.test(days.value))) {
      showAlert('Days must be a whole number.');
      days.focus();
      return;
    }
    const body = { name, groups: words($('k-groups').value), models: words($('k-models').value) };
    const owner = $('k-owner').value.trim();
    if (me && me.admin && owner) body.owner = owner;
    if (days.value !== '') body.expires_in_days = Number(days.value);
    $('k-issue').disabled = true;
    try {
      const issued = await api('POST', '/v1/keys', body, KEY_MESSAGES);
      $('k-name').value = '';
      $('k-models').value = '';
      $('k-owner').value = '';
      revealKey(issued);
      await showKeys().catch(reportError);
      setStatus(`Issued key ${issued.id} (${issued.name}).`);
    } catch (e) {
      reportError(e);
    } finally {
      $('k-issue').disabled = false;
    }
  }

  // Opens the confirmation of a revocation or a rotation of `k`.
  function askKeyAction(action, k, opener) {
    if (action === 'rotate' && keyStillShown()) return;
    showAlert('');
    keyAction = { action, id: k.id, name: k.name, opener };
    const rotate = action === 'rotate';
    $('ka-title').textContent = rotate ? `Rotate ${k.name}?` : `Revoke ${k.name}?`;
    $('ka-text').textContent = rotate
      ? `A new key with the same name, owner, groups and models replaces ${k.id}; it is shown once. ` +
        'The old key keeps working for the overlap, then stops.'
      : `Every gateway refuses ${k.id} from now on. This cannot be undone: scripts that use it stop working.`;
    $('ka-overlap-field').hidden = !rotate;
    $('ka-overlap').value = '0';
    const confirm = $('ka-confirm');
    confirm.textContent = rotate ? 'Rotate the key' : 'Revoke the key';
    confirm.className = rotate ? 'primary' : 'danger';
    $('key-act').hidden = false;
    $('key-act').dataset.action = action;
    $('key-act').dataset.id = k.id;
    (rotate ? $('ka-overlap') : $('ka-title')).focus();
  }

  function closeKeyAction(returnFocus) {
    const opener = keyAction && keyAction.opener;
    keyAction = null;
    $('key-act').hidden = true;
    if (returnFocus && opener && opener.isConnected) opener.focus();
  }

  async function confirmKeyAction() {
    if (!keyAction) return;
    const { action, id, name } = keyAction;
    if (action === 'rotate' && keyStillShown()) return;
    const path = `/v1/keys/${encodeURIComponent(id)}/${action}`;
    let body;
    if (action === 'rotate') {
      const overlap = $('ka-overlap');
      const value = overlap.value.trim();
      if (overlap.validity.badInput || !/^\d*$/.test(value)) {
        showAlert('The overlap is a whole number of seconds (0: the old key stops at once).');
        overlap.focus();
        return;
      }
      body = { overlap_seconds: value === '' ? 0 : Number(value) };
    }
    showAlert('');
    setStatus('');
    $('ka-confirm').disabled = true;
    try {
      let done;
      if (action === 'rotate') {
        const issued = await api('POST', path, body, KEY_MESSAGES);
        closeKeyAction(false);
        revealKey(issued);
        done = `Rotated ${name}: ${issued.id} replaces ${id}.`;
      } else {
        await api('POST', path, undefined, KEY_MESSAGES);
        closeKeyAction(false);
        $('keys-title').focus();
        done = `Revoked ${name} (${id}).`;
      }
      await showKeys().catch(reportError);
      setStatus(done);
    } catch (e) {
      reportError(e);
    } finally {
      $('ka-confirm').disabled = false;
    }
  }

  function wireKeys() {
    $('issue').addEventListener('submit', (event) => {
      event.preventDefault();
      issueKey();
    });
    $('ka-form').addEventListener('submit', (event) => {
      event.preventDefault();
      confirmKeyAction();
    });
    $('ka-cancel').addEventListener('click', () => closeKeyAction(true));
    $('key-act').addEventListener('keydown', (event) => {
      if (event.key === 'Escape') closeKeyAction(true);
    });
    $('kr-copy').addEventListener('click', () => copyKey());
    $('kr-done').addEventListener('click', () => {
      forgetKey();
      setStatus('The key is no longer shown.');
      $('keys-title').focus();
    });
    $('keys-refresh').addEventListener('click', () => { showAlert(''); showKeys().catch(reportError); });
  }

  // ---- start ---------------------------------------------------------------

  async function main() {
    $('sign-in').addEventListener('click', () => signIn().catch(reportError));
    $('sign-out').addEventListener('click', () => signOut());
    $('tab-pending').addEventListener('click', () => { location.hash = 'pending'; });
    $('tab-history').addEventListener('click', () => { location.hash = 'history'; });
    $('refresh').addEventListener('click', () => { showAlert(''); route(); });
    $('decide').addEventListener('submit', (event) => {
      event.preventDefault();
      const action = event.submitter && event.submitter.value;
      if (action === 'approve' || action === 'deny') decide(action);
    });
    window.addEventListener('hashchange', () => { showAlert(''); route(); });
    wireSessions();
    wireKeys();

    try {
      const response = await fetch('/v1/ui/config', { cache: 'no-store' });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
      config = body;
    } catch (e) {
      showAlert(`Sign-in is not available: ${e.message}`);
    }

    // Opened on another name of this server (localhost for 127.0.0.1, say):
    // move to the registered one first, or the sign-in would come back to a
    // tab storage that never saw it start.
    if (config && config.redirect_uri) {
      const home = new URL(config.redirect_uri, location.href);
      if (home.origin !== location.origin) {
        location.replace(pageUrl(mode) + location.hash);
        return;
      }
    }

    const params = new URLSearchParams(location.search);
    if (config && (params.has('code') || params.has('error'))) {
      try {
        await finishSignIn(params);
      } catch (e) {
        showAlert(e.message);
      }
    }
    session = loadSession();
    render();
    document.body.dataset.ready = 'true';
  }

  main();
})();
