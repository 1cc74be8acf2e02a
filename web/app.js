// Tollgate demo page: sign in, chat with streaming through the `ai` function, and show what
// the gateway says each call cost and what is left. Plain ES module: no build step.

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// Project and sign-in
// ---------------------------------------------------------------------------------------

const PROJECT_KEY = "tollgate.demo.project";
const TOKEN_KEY = "tollgate.demo.token";

/**
 * The Supabase project to talk to. Without a saved hosted project it is the server that
 * serves this page (the local stack serves the page and the function under one origin).
 */
function loadProject() {
  try {
    const saved = JSON.parse(localStorage.getItem(PROJECT_KEY) ?? "null");
    if (saved?.url && saved?.publishableKey) return { ...saved, hosted: true };
  } catch { /* a damaged entry: fall back to this server */ }
  return { url: location.origin, publishableKey: "", hosted: false };
}

const project = loadProject();
const functionBase = `${project.url.replace(/\/+$/, "")}/functions/v1/ai/v1`;

/** Where the access token comes from: a pasted/dev token, or a supabase-js session. */
let auth = null;
let supabase = null;

async function supabaseClient() {
  if (supabase) return supabase;
  let createClient;
  try {
    ({ createClient } = await import("./vendor/supabase-js.js"));
  } catch {
    throw new Error("supabase-js is not bundled next to this page yet: run `npm run dev` once (it makes web/vendor/).");
  }
  supabase = createClient(project.url, project.publishableKey);
  return supabase;
}

async function accessToken() {
  if (auth?.kind === "token") return auth.token;
  if (auth?.kind === "supabase") {
    // supabase-js refreshes the session when it is about to expire.
    const { data } = await supabase.auth.getSession();
    return data.session?.access_token ?? null;
  }
  return null;
}

/** The claims of a JWT, for display only: the gateway is what verifies it. */
function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

function useToken(token, persist = true) {
  const claims = claimsOf(token);
  if (!claims?.sub) throw new Error("That is not a Supabase access token (a JWT with a `sub` claim).");
  if (claims.exp && claims.exp * 1000 < Date.now()) throw new Error("That token has expired: get a fresh one.");
  auth = { kind: "token", token };
  if (persist) sessionStorage.setItem(TOKEN_KEY, token);
  signedIn(claims);
}

function signedIn(claims) {
  const who = claims.is_anonymous ? "anonymous user" : (claims.email || claims.sub);
  $("identity-label").textContent = `Signed in as ${who}`;
  // supabase-js reports every token refresh too: the page is already set up for those.
  if (!$("chat").hidden) return;
  $("signin-error").hidden = true;
  $("identity").hidden = false;
  $("signin").hidden = true;
  $("chat").hidden = false;
  $("limits").hidden = false;
  $("prompt").focus();
  refreshUsage();
  loadModels();
}

function signedOut() {
  auth = null;
  // The next user starts with an empty conversation.
  inFlight?.abort();
  messages = [];
  $("transcript").replaceChildren();
  $("empty").hidden = false;
  $("identity").hidden = true;
  $("signin").hidden = false;
  $("chat").hidden = true;
  $("limits").hidden = true;
}

function showSigninError(error) {
  const message = error?.message ?? String(error);
  $("signin-error").textContent = /fetch/i.test(`${error?.name} ${message}`)
    ? `Could not reach ${project.url} (${message}). Check the project URL.`
    : message;
  $("signin-error").hidden = false;
}

async function setUpSignin() {
  $("endpoint").textContent = functionBase;
  $("project-line").textContent = project.hosted
    ? `Project: ${project.url}`
    : `Gateway: this server (${location.origin}). For a hosted project, connect it below.`;
  $("forget-project").hidden = !project.hosted;
  if (project.hosted) {
    $("project-url").value = project.url;
    $("publishable-key").value = project.publishableKey;
  }

  // The local dev command writes the dev user's token next to the page; elsewhere it is absent.
  if (!project.hosted) {
    const session = await fetch(".dev/session.json").then((r) => r.ok ? r.json() : null).catch(() => null);
    if (session?.accessToken) {
      $("dev-user").hidden = false;
      $("use-dev-user").onclick = () => {
        try {
          useToken(session.accessToken);
        } catch (error) {
          showSigninError(error);
        }
      };
    }
  }

  if (project.hosted) {
    $("hosted-signin").hidden = false;
    try {
      const client = await supabaseClient();
      client.auth.onAuthStateChange((_event, session) => {
        if (session) {
          auth = { kind: "supabase" };
          signedIn(claimsOf(session.access_token) ?? {});
        } else if (auth?.kind === "supabase") signedOut();
      });
    } catch (error) {
      showSigninError(error);
    }
  }

  // With no other way to sign in here, the token form is the way.
  if (!project.hosted && $("dev-user").hidden) $("token-details").open = true;

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved && !auth) {
    try {
      useToken(saved, false);
      return;
    } catch {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }
  if (!auth) signedOut();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  try {
    useToken($("token").value.trim().replace(/^Bearer\s+/i, ""));
    $("token").value = "";
  } catch (error) {
    showSigninError(error);
  }
});

$("sign-in-anonymously").addEventListener("click", async () => {
  const { error } = await (await supabaseClient()).auth.signInAnonymously();
  if (error) showSigninError(error);
});

let otpEmail = "";
$("email-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  otpEmail = $("email").value.trim();
  const { error } = await (await supabaseClient()).auth.signInWithOtp({
    email: otpEmail,
    options: { emailRedirectTo: location.href.split("#")[0] },
  });
  if (error) return showSigninError(error);
  $("otp-form").hidden = false;
  $("otp").focus();
});

$("otp-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const client = await supabaseClient();
  const { error } = await client.auth.verifyOtp({ email: otpEmail, token: $("otp").value.trim(), type: "email" });
  if (error) showSigninError(error);
});

$("project-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const url = $("project-url").value.trim().replace(/\/+$/, "");
  const publishableKey = $("publishable-key").value.trim();
  localStorage.setItem(PROJECT_KEY, JSON.stringify({ url, publishableKey }));
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

$("forget-project").addEventListener("click", () => {
  localStorage.removeItem(PROJECT_KEY);
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

$("sign-out").addEventListener("click", async () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (auth?.kind === "supabase") await supabase.auth.signOut();
  signedOut();
});

// ---------------------------------------------------------------------------------------
// Calling the gateway
// ---------------------------------------------------------------------------------------

async function gateway(path, init = {}) {
  const token = await accessToken();
  if (!token) throw new Error("You are signed out.");
  const headers = new Headers(init.headers);
  headers.set("authorization", `Bearer ${token}`);
  // As supabase-js does: the project's key beside the user's token (hosted projects expect it).
  if (project.publishableKey) headers.set("apikey", project.publishableKey);
  return await fetch(`${functionBase}/${path}`, { ...init, headers });
}

/** A rejected or failed call, read from the OpenAI error object and the gateway's headers. */
async function rejectionOf(response) {
  const text = await response.text();
  let error = null;
  try {
    error = JSON.parse(text).error ?? null;
  } catch { /* not JSON: e.g. a proxy's error page */ }
  const retryAfter = Number(response.headers.get("retry-after"));
  return {
    status: response.status,
    message: error?.message ?? (text.trim().slice(0, 300) || response.statusText || "The request failed."),
    code: error?.code ?? null,
    type: error?.type ?? null,
    layer: response.headers.get("x-tollgate-layer"),
    retryAfter: Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null,
    requestId: response.headers.get("x-request-id"),
  };
}

/** Yields the JSON payload of each `data:` event of an SSE body until `[DONE]`. */
async function* sseEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      if (signal.aborted) return;
      // Without [DONE] the answer may be cut short: never pass it off as complete.
      throw new Error("the connection closed before the answer was complete.");
    }
    buffer += value;
    // Events end with a blank line; a chunk may hold several events or part of one.
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) !== -1) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Usage panel (GET /v1/usage)
// ---------------------------------------------------------------------------------------

let usage = null;

async function fetchUsage() {
  const response = await gateway("usage");
  if (!response.ok) throw await rejectionOf(response);
  return await response.json();
}

async function refreshUsage() {
  try {
    renderUsage(await fetchUsage());
  } catch (error) {
    $("usage-updated").textContent = `Could not read usage: ${error.message}`;
  }
}

const number = new Intl.NumberFormat("en-US");

function money(usd) {
  if (usd === null || usd === undefined) return "—";
  const value = Number(usd);
  // Single calls cost fractions of a cent: show enough digits to see them.
  if (value !== 0 && Math.abs(value) < 0.01) {
    return `$${value.toLocaleString("en-US", { maximumSignificantDigits: 2, maximumFractionDigits: 8 })}`;
  }
  return value.toLocaleString("en-US", { style: "currency", currency: "USD" });
}

/** "6m 0s", "52s": how long until an instant. */
function until(instant) {
  const seconds = Math.max(0, Math.ceil((Date.parse(instant) - Date.now()) / 1000));
  return duration(seconds);
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function windowName(window) {
  const named = { 60: "Per minute", 3600: "Per hour", 86400: "Per day" }[window.window_seconds];
  return named ?? `Per ${duration(window.window_seconds)}`;
}

function gauge({ label, value, detail, used, limit, testId }) {
  const item = document.createElement("li");
  item.className = "gauge";
  if (testId) item.dataset.testid = testId;
  const share = limit ? Math.min(1, Math.max(0, used / limit)) : 0;
  item.innerHTML = `
    <div class="gauge-row"><span class="gauge-label"></span><span class="gauge-value"></span></div>
    <div class="bar" aria-hidden="true"><span></span></div>
    <div class="gauge-detail muted small"></div>`;
  item.querySelector(".gauge-label").textContent = label;
  item.querySelector(".gauge-value").textContent = value;
  item.querySelector(".gauge-detail").textContent = detail;
  const bar = item.querySelector(".bar span");
  bar.style.width = `${(share * 100).toFixed(1)}%`;
  if (share >= 0.9) bar.classList.add("danger");
  else if (share >= 0.75) bar.classList.add("warn");
  return item;
}

function renderUsage(next) {
  usage = next;
  $("tier").textContent = next.tier ? `${next.tier[0].toUpperCase()}${next.tier.slice(1)} tier` : "";
  $("tier").hidden = !next.tier;

  const windows = next.windows ?? [];
  $("windows").replaceChildren(
    ...windows.map((window) =>
      gauge({
        label: windowName(window),
        value: `${number.format(Math.max(0, window.remaining))} of ${number.format(window.limit)} left`,
        // A window nobody has used yet has nothing to reset.
        detail: window.remaining >= window.limit
          ? "Nothing used in this window"
          : `Resets in ${until(window.reset_at)}`,
        used: window.limit - window.remaining,
        limit: window.limit,
        testId: `window-${window.name}`,
      })
    ),
  );
  if (!windows.length) $("windows").innerHTML = `<li class="muted small">No request limits on this tier.</li>`;

  const quotas = Object.entries(next.tokens ?? {}).filter(([, quota]) => quota && quota.limit !== null);
  $("token-quotas").replaceChildren(
    ...quotas.map(([name, quota]) =>
      gauge({
        label: name === "daily" ? "Today" : name === "monthly" ? "This month" : name,
        value: `${number.format(quota.used)} of ${number.format(quota.limit)}`,
        detail: `${quota.reserved ? `${number.format(quota.reserved)} held for calls in flight · ` : ""}Resets in ${
          until(quota.reset_at)
        }`,
        used: quota.used + quota.reserved,
        limit: quota.limit,
        testId: `tokens-${name}`,
      })
    ),
  );
  if (!quotas.length) $("token-quotas").innerHTML = `<li class="muted small">No token quotas on this tier.</li>`;

  const spend = next.spend;
  const spendList = document.createElement("ul");
  spendList.className = "gauges";
  if (spend) {
    spendList.append(gauge({
      label: "Month to date",
      value: spend.cap_usd === null
        ? money(spend.month_to_date_usd)
        : `${money(spend.month_to_date_usd)} of ${money(spend.cap_usd)}`,
      detail: spend.cap_usd === null
        ? "No spending cap on this account"
        : `${money(spend.remaining_usd)} left · Resets in ${until(spend.reset_at)}`,
      used: spend.month_to_date_usd + spend.reserved_usd,
      limit: spend.cap_usd,
      testId: "spend",
    }));
  }
  $("spend").replaceChildren(spendList);

  $("warnings").replaceChildren(...(next.warnings ?? []).map((warning) => {
    const item = document.createElement("li");
    item.textContent = warning.message;
    return item;
  }));
  $("usage-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

// Reset times count down between refreshes; a window that has reset is read again.
setInterval(() => {
  if (!usage || $("limits").hidden) return;
  const reset = (usage.windows ?? []).some((w) => w.remaining < w.limit && Date.parse(w.reset_at) <= Date.now());
  if (reset) refreshUsage();
  else renderUsage(usage);
}, 1000);

$("refresh-usage").addEventListener("click", refreshUsage);

async function loadModels() {
  try {
    const response = await gateway("models");
    if (!response.ok) return;
    const { data } = await response.json();
    $("models").replaceChildren(
      ...data.map((model) => Object.assign(document.createElement("option"), { value: model.id })),
    );
  } catch { /* the model field still takes any name */ }
}

// ---------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------

/** The conversation as sent to the model: only turns that were answered. */
let messages = [];
let inFlight = null;
let waitTimer = null;

function turn(kind, label) {
  const item = document.createElement("li");
  item.className = `turn ${kind}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = label;
  item.append(who);
  $("transcript").append(item);
  $("empty").hidden = true;
  return item;
}

function addText(item, text) {
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(body);
  return body;
}

function addFacts(item, facts) {
  const list = document.createElement("dl");
  list.className = "facts";
  for (const [name, value, testId] of facts) {
    if (value === null || value === undefined || value === "") continue;
    const group = document.createElement("div");
    if (testId) group.dataset.testid = testId;
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = value;
    group.append(term, detail);
    list.append(group);
  }
  item.append(list);
  return list;
}

function scrollToEnd() {
  const transcript = $("transcript");
  transcript.scrollTop = transcript.scrollHeight;
}

function setBusy(busy) {
  $("send").disabled = busy || waitTimer !== null;
  $("stop").hidden = !busy;
  $("composer-status").textContent = busy ? "Streaming the answer…" : "";
}

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("prompt-form").requestSubmit();
  }
});

$("stop").addEventListener("click", () => inFlight?.abort());

$("new-chat").addEventListener("click", () => {
  inFlight?.abort();
  messages = [];
  $("transcript").replaceChildren();
  $("empty").hidden = false;
});

$("prompt-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || inFlight || waitTimer) return;
  $("prompt").value = "";
  send(text, $("model").value.trim() || "gpt-4o-mini");
});

async function send(text, model) {
  const userTurn = turn("user", "You");
  addText(userTurn, text);
  const controller = new AbortController();
  inFlight = controller;
  setBusy(true);
  scrollToEnd();

  // The spend before the call: the call's cost is what it adds once it is recorded.
  const before = await fetchUsage().catch(() => null);
  const history = [...messages, { role: "user", content: text }];
  let response;
  try {
    response = await gateway("chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, messages: history, stream: true, stream_options: { include_usage: true } }),
      signal: controller.signal,
    });
  } catch (error) {
    finish();
    showRejection(userTurn, text, {
      status: 0,
      message: controller.signal.aborted ? "Stopped before the gateway answered." : `Network error: ${error.message}`,
    });
    return;
  }

  if (!response.ok) {
    finish();
    showRejection(userTurn, text, await rejectionOf(response));
    refreshUsage();
    return;
  }

  const answerTurn = turn("assistant", response.headers.get("x-tollgate-model") ?? model);
  const answer = addText(answerTurn, "");
  // Screen readers announce the answer once, when it is complete (aria-busy ends).
  answer.setAttribute("aria-live", "polite");
  answer.setAttribute("aria-busy", "true");
  answer.classList.add("streaming");

  let content = "", callUsage = null, failure = null;
  try {
    for await (const chunk of sseEvents(response.body, controller.signal)) {
      if (chunk.error) {
        failure = chunk.error;
        break;
      }
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        content += delta;
        answer.textContent = content;
        scrollToEnd();
      }
      if (chunk.usage) callUsage = chunk.usage;
    }
  } catch (error) {
    failure = { message: error.message, code: null };
  }
  if (controller.signal.aborted) failure = { message: "you stopped it.", code: null };
  answer.classList.remove("streaming");
  answer.setAttribute("aria-busy", "false");
  finish();

  if (failure) {
    // A stream that broke is not a finished answer: say so, and keep it out of the history.
    const code = failure.code ? ` (${failure.code})` : "";
    const note = addText(answerTurn, `The answer is incomplete: ${failure.message}${code}`);
    note.className = "notice";
  } else {
    messages = [...history, { role: "assistant", content }];
  }

  const headers = response.headers;
  const facts = addFacts(answerTurn, [
    [
      "Tokens",
      callUsage
        ? `${number.format(callUsage.total_tokens)} (${number.format(callUsage.prompt_tokens)} in, ${
          number.format(callUsage.completion_tokens)
        } out)`
        : "not reported",
      "tokens",
    ],
    ["Cost", "recording…", "cost"],
    [
      "Requests left",
      headers.get("x-ratelimit-remaining-requests") !== null
        ? `${headers.get("x-ratelimit-remaining-requests")} of ${
          headers.get("x-ratelimit-limit-requests")
        }, resets in ${headers.get("x-ratelimit-reset-requests")}`
        : null,
      "remaining",
    ],
    ["Provider", headers.get("x-tollgate-provider")],
    ["Gateway overhead", headers.get("x-tollgate-overhead-ms") && `${headers.get("x-tollgate-overhead-ms")} ms`],
    ["Request id", headers.get("x-request-id")],
  ]);
  for (const [header, label] of [["x-tollgate-warning", "Warning"], ["x-tollgate-restricted", "Restricted mode"]]) {
    const value = headers.get(header);
    if (value) addText(answerTurn, `${label}: ${value}`).className = "notice";
  }
  scrollToEnd();

  const cost = facts.querySelector("[data-testid=cost] dd");
  if (headers.get("x-tollgate-cache") === "hit") {
    cost.textContent = "$0 (answered from the gateway's cache)";
    refreshUsage();
    return;
  }
  const settled = await settledUsage(before, Math.max(1, callUsage?.total_tokens ?? 0));
  if (settled) renderUsage(settled.usage);
  cost.textContent = settled?.recorded && before?.spend
    ? money(Math.round((settled.usage.spend.month_to_date_usd - before.spend.month_to_date_usd) * 1e9) / 1e9)
    : "not recorded yet (see Refresh)";
}

/**
 * The caller's usage once the gateway has recorded the call (it settles after the response):
 * the tokens used today went up by the call's tokens (or, on a tier without token quotas,
 * the spend moved).
 */
async function settledUsage(before, tokens) {
  const deadline = Date.now() + 5000;
  let latest = null;
  while (Date.now() < deadline) {
    latest = await fetchUsage().catch(() => null);
    const was = before?.tokens?.daily?.used, now = latest?.tokens?.daily?.used;
    const recorded = was !== undefined && now !== undefined
      ? now >= was + tokens
      : latest?.spend && before?.spend && latest.spend.month_to_date_usd !== before.spend.month_to_date_usd;
    if (recorded) return { usage: latest, recorded: true };
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return latest ? { usage: latest, recorded: false } : null;
}

function finish() {
  inFlight = null;
  setBusy(false);
}

/** A call the gateway turned away (or that failed): the reason, and how long to wait. */
function showRejection(userTurn, text, rejection) {
  userTurn.classList.add("unsent");
  // Put the prompt back so that it can be sent again.
  if (!$("prompt").value) $("prompt").value = text;

  const item = turn("rejected", rejection.status === 429 ? "Rejected by the gateway" : "The call failed");
  const message = addText(item, rejection.message);
  // Announced once; the countdown below is not a live region (it would speak every second).
  message.setAttribute("role", "alert");
  message.dataset.testid = "rejection-message";
  addFacts(item, [
    ["Status", rejection.status ? String(rejection.status) : null],
    ["Code", rejection.code, "rejection-code"],
    ["Layer", rejection.layer, "rejection-layer"],
    ["Request id", rejection.requestId],
  ]);
  if (rejection.retryAfter) startWait(item, rejection.retryAfter);
  scrollToEnd();
}

/** Counts Retry-After down and keeps Send disabled until then. */
function startWait(item, seconds) {
  const wait = document.createElement("p");
  wait.className = "wait";
  wait.dataset.testid = "wait";
  item.append(wait);
  const until = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    if (left === 0) {
      clearInterval(waitTimer);
      waitTimer = null;
      wait.textContent = "You can send again.";
      $("send").textContent = "Send";
      setBusy(false);
      refreshUsage();
      return;
    }
    wait.textContent = `You can send again in ${duration(left)}.`;
    $("send").textContent = `Wait ${duration(left)}`;
  };
  clearInterval(waitTimer);
  waitTimer = setInterval(tick, 1000);
  tick();
  setBusy(false);
}

setUpSignin();
