/**
 * The demo page (web/) in a real browser: Debian's chromium driven by playwright-core (which
 * never downloads a browser of its own). A user signs in with an access token, watches an
 * answer stream in with its tokens and cost, sees a stream the provider cut marked incomplete,
 * keeps sending until the free tier's per-minute window is full, and sees the 429 with its
 * reason and a countdown. Saves a screenshot to web/.screenshots/demo.png.
 */
import assert from "node:assert/strict";
import { chromium, type Page } from "npm:playwright-core@1.65.1";
import { bundleSupabaseJs } from "../web/prepare.ts";
import { createUser, integration, startTestGateway } from "./stack/harness.ts";

const webDir = new URL("../web/", import.meta.url).pathname;
const screenshotPath = `${webDir}.screenshots/demo.png`;
const chromiumPath = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";
// Headless and quiet: no GPU, no sandbox (containers, root), no calls home.
const chromiumArgs = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
/** The whole test, browser start included, ends within this. */
const testBudgetMs = 120_000;
/** Free tier: requests per minute (the tightest window). */
const perMinute = 10;

integration("web: sign in, stream an answer with its usage, then hit the rate limit", async () => {
  try {
    await Deno.stat(chromiumPath);
  } catch {
    throw new Error(
      `no Chromium at ${chromiumPath}: run the tests with \`npm test\` (it installs it) or set CHROMIUM_PATH`,
    );
  }
  await bundleSupabaseJs();
  const user = await createUser();
  const gateway = await startTestGateway({ TOLLGATE_STATIC_DIR: webDir });
  const profile = await Deno.makeTempDir({ prefix: "tollgate-chromium-" });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: chromiumArgs,
    viewport: { width: 1280, height: 1000 },
    timeout: 30_000,
  });
  // Closing the browser makes every pending step fail, which bounds the test's time.
  const watchdog = setTimeout(() => context.close(), testBudgetMs);
  try {
    context.setDefaultTimeout(15_000);
    const page = context.pages()[0] ?? await context.newPage();
    const pageErrors: string[] = [];
    page.on("pageerror", (error) => pageErrors.push(error.message));

    await page.goto(gateway.url);
    await signIn(page, user.token, `${user.id}@example.test`);
    await streamOneAnswer(page);
    await showACutStreamAsIncomplete(page);
    await fillTheMinuteWindow(page, 2);

    await Deno.mkdir(`${webDir}.screenshots`, { recursive: true });
    await page.screenshot({ path: screenshotPath });
    assert.deepEqual(pageErrors, [], "the page threw errors");
  } finally {
    clearTimeout(watchdog);
    await context.close().catch(() => {});
    await gateway.process.stop();
    await gateway.provider.close();
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
});

/** The local sign-in path: paste a signed-in user's access token. */
async function signIn(page: Page, token: string, email: string): Promise<void> {
  const field = page.getByLabel("A signed-in user's Supabase access token (JWT)");
  // The page opens the token form itself once it has found no other way to sign in here. A
  // click on the form's summary that lands just after that closes it again, so each click is
  // made only on a closed form, and the next look sees what it did.
  const details = page.locator("#token-details");
  const deadline = Date.now() + 15_000;
  while (!await field.isVisible()) {
    if (Date.now() > deadline) throw new Error("the token form never opened");
    if (await details.getAttribute("open") === null) {
      await page.getByText("Paste an access token").click();
    }
    await page.waitForTimeout(100);
  }
  await field.fill(token);
  await page.getByRole("button", { name: "Use this token" }).click();
  await page.locator("#identity-label").filter({ hasText: email }).waitFor();
  // The limits panel reads GET /v1/usage: the free tier, nothing used yet.
  await page.locator("[data-testid=window-minute] .gauge-value").filter({
    hasText: `${perMinute} of ${perMinute} left`,
  })
    .waitFor();
}

async function send(page: Page, text: string): Promise<void> {
  await page.getByLabel("Message").fill(text);
  await page.getByLabel("Message").press("Enter");
}

async function streamOneAnswer(page: Page): Promise<void> {
  // 40 words, 50 ms apart: two seconds of streaming to catch half-way.
  await send(page, "Tell me about toll gates [[mock words=40 chunk_delay_ms=50]]");
  const answer = page.locator(".turn.assistant .text").first();

  // Part of the answer is on screen while the stream is still open ...
  await page.locator('.turn.assistant .text[aria-busy="true"]').filter({ hasText: /\S/ }).waitFor();
  const partial = await answer.textContent() ?? "";
  await page.locator('.turn.assistant .text[aria-busy="false"]').waitFor();
  const complete = await answer.textContent() ?? "";
  assert.ok(partial.length > 0 && partial.length < complete.length, `streamed: "${partial}" then "${complete}"`);
  assert.ok(complete.startsWith(partial));
  assert.equal(complete.split(/\s+/).length, 40);

  // ... then its usage: tokens from the stream, cost once the gateway has recorded the call.
  const facts = page.locator(".turn.assistant .facts").first();
  assert.match(await facts.locator("[data-testid=tokens] dd").textContent() ?? "", /^\d+ \(\d+ in, 40 out\)$/);
  assert.match(
    await facts.locator("[data-testid=remaining] dd").textContent() ?? "",
    new RegExp(`^${perMinute - 1} of ${perMinute}, resets in \\d+m?\\d*s$`),
  );
  const cost = facts.locator("[data-testid=cost] dd");
  await cost.filter({ hasText: /^\$/ }).waitFor();
  assert.ok(Number((await cost.textContent())!.slice(1)) > 0, "the answer cost something");

  const minute = page.locator("[data-testid=window-minute]");
  await minute.locator(".gauge-value").filter({ hasText: `${perMinute - 1} of ${perMinute} left` }).waitFor();
  assert.match(await minute.locator(".gauge-detail").textContent() ?? "", /^Resets in \d+/);
  assert.match(await page.locator("[data-testid=spend] .gauge-value").textContent() ?? "", /^\$0\.\d+ of \$\d/);
}

/** A stream the provider cuts is never passed off as a finished answer. */
async function showACutStreamAsIncomplete(page: Page): Promise<void> {
  await send(page, "This one breaks [[mock words=20 drop_after=5]]");
  const cut = page.locator(".turn.assistant").nth(1);
  await cut.locator(".notice").filter({ hasText: "The answer is incomplete" }).waitFor();
  assert.match(await cut.locator(".notice").first().textContent() ?? "", /\(upstream_stream_cut\)$/);
  assert.equal((await cut.locator(".text").first().textContent())!.split(/\s+/).length, 5);
}

async function fillTheMinuteWindow(page: Page, alreadySent: number): Promise<void> {
  const answers = page.locator('.turn.assistant .text[aria-busy="false"]');
  const rejected = page.locator(".turn.rejected");
  // The window takes perMinute calls; the one after them is turned away.
  for (let sent = alreadySent; sent <= perMinute; sent++) {
    await send(page, `Ping ${sent} [[mock words=3]]`);
    // Wait for this call's outcome: a finished answer or a rejection.
    await page.locator('.turn.assistant .text[aria-busy="false"], .turn.rejected').nth(sent).waitFor();
  }
  assert.equal(await answers.count(), perMinute);
  assert.equal(await rejected.count(), 1);

  // The reason, as the gateway gave it, and how long to wait.
  assert.match(await rejected.locator("[data-testid=rejection-message]").textContent() ?? "", /Rate limit reached/);
  assert.equal(await rejected.locator("[data-testid=rejection-code] dd").textContent(), "rate_limited");
  assert.equal(await rejected.locator("[data-testid=rejection-layer] dd").textContent(), "user_window");
  const wait = rejected.locator("[data-testid=wait]");
  const secondsLeft = async () => {
    const match = (await wait.textContent() ?? "").match(/^You can send again in (?:(\d+)m )?(\d+)s\.$/);
    assert.ok(match, `a countdown, not "${await wait.textContent()}"`);
    return Number(match[1] ?? 0) * 60 + Number(match[2]);
  };
  const first = await secondsLeft();
  assert.ok(first > 0 && first <= 60, `wait ${first}s`);
  await page.waitForTimeout(1_100);
  assert.ok(await secondsLeft() < first, "the countdown runs");
  assert.ok(await page.locator("#send").isDisabled(), "Send waits for the window");
  assert.match(await page.locator("#send").textContent() ?? "", /^Wait /);
  // The turned-away prompt is back in the box, ready to send again.
  assert.match(await page.getByLabel("Message").inputValue(), /^Ping 10/);
  await page.locator("[data-testid=window-minute] .gauge-value").filter({ hasText: `0 of ${perMinute} left` })
    .waitFor();
}
