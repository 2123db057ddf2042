// Warden approvals page: sign-in by OpenID Connect (authorization code + PKCE,
// a public client) and a queue of approvals to decide. No framework, no build
// step. Everything that came from a request (prompt, names, reasons) is put in
// the page with textContent, never as HTML.
'use strict';

(function () {
  const PKCE_KEY = 'warden.signin';   // verifier, state, nonce, where to return
  const TOKEN_KEY = 'warden.session'; // {token, exp} for this tab only
  const REFRESH_MS = 15000;

  const $ = (id) => document.getElementById(id);
  let config = null;
  let session = null; // {token, claims}
  let view = 'pending';
  let refreshTimer = null;

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
    history.replaceState(null, '', location.pathname + ((pending && pending.hash) || ''));
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
  };

  async function api(method, path, body) {
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
      const known = MESSAGES[err.code];
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
    const hash = decodeURIComponent(location.hash.slice(1));
    try {
      if (/^apr_[A-Za-z0-9_-]+$/.test(hash)) {
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
    $('signed-out').hidden = !!session;
    $('who').hidden = !session;
    $('queue').hidden = true;
    $('detail').hidden = true;
    if (!session) return;
    const c = session.claims;
    $('who-name').textContent = c.email && c.email !== c.sub ? `${c.sub} (${c.email})` : (c.sub || 'unknown');
    clearInterval(refreshTimer);
    // Keep the queue fresh while it is on screen.
    refreshTimer = setInterval(() => {
      if (!document.hidden && session && !$('queue').hidden) showList().catch(reportError);
    }, REFRESH_MS);
    route();
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
        location.replace(home.href + location.hash);
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
