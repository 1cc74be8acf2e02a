import assert from "node:assert/strict";
import * as jose from "jose";
import { createVerifier } from "../../supabase/functions/_shared/auth.ts";
import { GatewayError } from "../../supabase/functions/_shared/errors.ts";
import { generateSigningKey, jwksOf, signAccessToken } from "../stack/keys.ts";

const supabaseUrl = "http://127.0.0.1:54321";
const key = await generateSigningKey();
const otherKey = await generateSigningKey();
const verify = createVerifier({ supabaseUrl, jwks: JSON.stringify(jwksOf(key)) });
const userId = crypto.randomUUID();

const withToken = (token: string) =>
  new Request(`${supabaseUrl}/functions/v1/ai/v1/models`, { headers: { authorization: `Bearer ${token}` } });

async function rejection(request: Request, verifier = verify): Promise<GatewayError> {
  try {
    await verifier(request);
  } catch (error) {
    assert.ok(error instanceof GatewayError);
    return error;
  }
  assert.fail("the token was accepted");
}

Deno.test("auth: a token signed by the project's key names the user", async () => {
  const token = await signAccessToken(key, supabaseUrl, { sub: userId, email: "a@example.com" });
  const caller = await verify(withToken(token));
  assert.deepEqual(caller, { userId, role: "authenticated", isAnonymous: false, email: "a@example.com" });
});

Deno.test("auth: anonymous sign-ins are told apart", async () => {
  const token = await signAccessToken(key, supabaseUrl, { sub: userId, is_anonymous: true });
  assert.equal((await verify(withToken(token))).isAnonymous, true);
});

Deno.test("auth: the Anthropic SDK's x-api-key header carries the token too", async () => {
  const token = await signAccessToken(key, supabaseUrl, { sub: userId });
  const request = new Request(supabaseUrl, { headers: { "x-api-key": token } });
  assert.equal((await verify(request)).userId, userId);
});

Deno.test("auth: missing, malformed and API-key credentials are 401 with a clear code", async () => {
  const missing = await rejection(new Request(supabaseUrl));
  assert.equal(missing.status, 401);
  assert.equal(missing.code, "missing_token");
  assert.equal((await rejection(withToken("not-a-jwt"))).code, "invalid_token");
  assert.match((await rejection(withToken("sb_publishable_abc"))).message, /API key is not a user token/);
});

Deno.test("auth: expired, wrong audience, wrong issuer and foreign keys are refused", async () => {
  const expired = await signAccessToken(key, supabaseUrl, { sub: userId, expiresIn: -60 });
  assert.equal((await rejection(withToken(expired))).code, "token_expired");

  const wrongAudience = await signAccessToken(key, supabaseUrl, { sub: userId, aud: "somebody-else" });
  assert.match((await rejection(withToken(wrongAudience))).message, /aud/);

  const wrongIssuer = await signAccessToken(key, "https://other.supabase.co", { sub: userId });
  assert.match((await rejection(withToken(wrongIssuer))).message, /iss/);

  const foreign = await signAccessToken(otherKey, supabaseUrl, { sub: userId });
  assert.equal((await rejection(withToken(foreign))).status, 401);
});

Deno.test("auth: alg none and a tampered payload are refused", async () => {
  const valid = await signAccessToken(key, supabaseUrl, { sub: userId });
  const [, payload, signature] = valid.split(".");
  const none = btoa(JSON.stringify({ alg: "none", typ: "JWT" })).replace(/=+$/, "");
  assert.equal((await rejection(withToken(`${none}.${payload}.`))).status, 401);

  const claims = JSON.parse(new TextDecoder().decode(jose.base64url.decode(payload)));
  const forged = jose.base64url.encode(JSON.stringify({ ...claims, sub: crypto.randomUUID() }));
  const header = valid.split(".")[0];
  assert.equal((await rejection(withToken(`${header}.${forged}.${signature}`))).status, 401);
});

Deno.test("auth: a token without a subject is refused", async () => {
  const token = await new jose.SignJWT({ role: "anon" })
    .setProtectedHeader({ alg: "ES256", kid: key.kid })
    .setAudience("authenticated")
    .setIssuer(`${supabaseUrl}/auth/v1`)
    .setExpirationTime("1h")
    .sign(await jose.importJWK(key.privateJwk, "ES256"));
  assert.match((await rejection(withToken(token))).message, /no subject/);
});

Deno.test("auth: HS256 tokens only with the legacy secret configured", async () => {
  const secret = "a-legacy-jwt-secret-of-at-least-32-characters";
  const token = await new jose.SignJWT({ role: "authenticated" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(userId)
    .setAudience("authenticated")
    .setIssuer(`${supabaseUrl}/auth/v1`)
    .setExpirationTime("1h")
    .sign(new TextEncoder().encode(secret));
  assert.match((await rejection(withToken(token))).message, /HS256 tokens are not accepted/);

  const legacy = createVerifier({ supabaseUrl, jwks: JSON.stringify(jwksOf(key)), legacyJwtSecret: secret });
  assert.equal((await legacy(withToken(token))).userId, userId);
  const wrongSecret = createVerifier({ supabaseUrl, legacyJwtSecret: "another-secret-of-at-least-32-characters!!" });
  assert.equal((await rejection(withToken(token), wrongSecret)).status, 401);
});

Deno.test("auth: the project's JWKS URL is fetched, cached, and refetched for an unknown kid", async () => {
  const served = [key];
  let fetches = 0;
  const server = Deno.serve({ port: 0, onListen: () => {} }, () => {
    fetches++;
    return Response.json(jwksOf(...served));
  });
  const url = `http://127.0.0.1:${server.addr.port}`;
  try {
    const remote = createVerifier({ supabaseUrl: url });
    const first = await signAccessToken(key, url, { sub: userId });
    await remote(withToken(first));
    await remote(withToken(first));
    assert.equal(fetches, 1, "the key set is cached");

    // A rotated-in key is picked up without a restart, once the refetch cooldown (5 s) allows.
    served.push(otherKey);
    await new Promise((resolve) => setTimeout(resolve, 5_100));
    const rotated = await signAccessToken(otherKey, url, { sub: userId });
    assert.equal((await remote(withToken(rotated))).userId, userId);
    assert.equal(fetches, 2);
  } finally {
    await server.shutdown();
  }
});
