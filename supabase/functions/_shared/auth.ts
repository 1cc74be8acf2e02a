/**
 * Who is calling: the user's Supabase access token, verified here (the function is deployed
 * with `verify_jwt = false`).
 *
 * Asymmetric signing keys come from the project's JWKS — inline in SUPABASE_JWKS (no network
 * call) or fetched from `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`, cached and refetched
 * when a token names an unknown `kid` (jose's remote key set does both). Projects that still
 * sign with the legacy HS256 secret can set TOLLGATE_LEGACY_JWT_SECRET.
 *
 * jose is used directly rather than `@supabase/server/core`: that module also loads
 * supabase-js into every cold start, and the verification it performs is these few lines.
 */
import * as jose from "jose";
import { GatewayError } from "./errors.ts";

export interface Caller {
  userId: string;
  role: string;
  isAnonymous: boolean;
  email?: string;
}

export interface AuthSettings {
  supabaseUrl: string;
  jwks?: string;
  legacyJwtSecret?: string;
}

/** A verifier bound to one project's keys; create once per isolate (it caches the JWKS). */
export function createVerifier(settings: AuthSettings) {
  const issuer = `${settings.supabaseUrl}/auth/v1`;
  const asymmetricKeys = settings.jwks
    ? jose.createLocalJWKSet(parseJwks(settings.jwks))
    : jose.createRemoteJWKSet(new URL(`${issuer}/.well-known/jwks.json`), {
      cacheMaxAge: 10 * 60 * 1000, // Supabase's edge caches the JWKS for 10 minutes too
      // A token with an unknown kid refetches the key set at most this often (a rotated-in key
      // is found within seconds; a flood of forged kids cannot hammer the auth server).
      cooldownDuration: 5 * 1000,
    });
  const legacySecret = settings.legacyJwtSecret ? new TextEncoder().encode(settings.legacyJwtSecret) : undefined;

  // Verified tokens, until they expire: a signature check costs far more than the rest of an
  // admission, and a signed-in user sends the same token on every call for up to an hour.
  const verified = new Map<string, { caller: Caller; expiresAt: number }>();

  return async function verify(request: Request): Promise<Caller> {
    const token = bearerToken(request);
    const known = verified.get(token);
    if (known && known.expiresAt > Date.now()) return known.caller;
    if (known) verified.delete(token);
    const { caller, expiresAt } = await verifyToken(token);
    if (verified.size >= verifiedCacheSize) verified.delete(verified.keys().next().value!);
    verified.set(token, { caller, expiresAt });
    return caller;
  };

  async function verifyToken(token: string): Promise<{ caller: Caller; expiresAt: number }> {
    let header: jose.ProtectedHeaderParameters;
    try {
      header = jose.decodeProtectedHeader(token);
    } catch {
      throw unauthorized("invalid_token", "The access token is malformed: expected a JWT.");
    }
    const options: jose.JWTVerifyOptions = { issuer, audience: "authenticated" };
    let payload: jose.JWTPayload;
    try {
      if (header.alg === "HS256") {
        if (!legacySecret) {
          throw unauthorized("invalid_token", "HS256 tokens are not accepted: this project verifies signing keys.");
        }
        ({ payload } = await jose.jwtVerify(token, legacySecret, { ...options, algorithms: ["HS256"] }));
      } else {
        ({ payload } = await jose.jwtVerify(token, asymmetricKeys, {
          ...options,
          algorithms: ["ES256", "RS256", "EdDSA"],
        }));
      }
    } catch (error) {
      throw error instanceof GatewayError ? error : unauthorized(...explain(error));
    }
    if (typeof payload.sub !== "string" || payload.sub === "") {
      throw unauthorized("invalid_token", "The access token has no subject (sub): sign in as a user.");
    }
    if (typeof payload.exp !== "number") {
      throw unauthorized("invalid_token", "The access token has no expiry (exp): sign in again.");
    }
    const caller = {
      userId: payload.sub,
      role: typeof payload.role === "string" ? payload.role : "authenticated",
      isAnonymous: payload.is_anonymous === true,
      email: typeof payload.email === "string" ? payload.email : undefined,
    };
    return { caller, expiresAt: payload.exp * 1000 };
  }
}

/** Per isolate; the oldest entry makes room (a few hundred bytes each). */
const verifiedCacheSize = 5000;

function bearerToken(request: Request): string {
  const header = request.headers.get("authorization");
  const token = header?.match(/^Bearer\s+(\S+)$/i)?.[1] ?? request.headers.get("x-api-key");
  if (!token) {
    throw unauthorized(
      "missing_token",
      "No access token: send the signed-in user's Supabase access token as `Authorization: Bearer <token>`.",
    );
  }
  if (token.startsWith("sb_")) {
    throw unauthorized("invalid_token", "An API key is not a user token: send the signed-in user's access token.");
  }
  return token;
}

function explain(error: unknown): [string, string] {
  if (error instanceof jose.errors.JWTExpired) {
    return ["token_expired", "The access token has expired: refresh the session."];
  }
  if (error instanceof jose.errors.JWTClaimValidationFailed) {
    return ["invalid_token", `The access token's ${error.claim} claim is not valid for this project.`];
  }
  if (error instanceof jose.errors.JWKSNoMatchingKey) {
    return ["invalid_token", "The access token was not signed by one of this project's keys."];
  }
  if (error instanceof jose.errors.JOSEAlgNotAllowed) {
    return ["invalid_token", "The access token's signing algorithm is not accepted."];
  }
  // The key set could not be fetched (network, timeout): the token may well be fine.
  if (error instanceof jose.errors.JWKSTimeout || !(error instanceof jose.errors.JOSEError)) {
    throw new GatewayError({
      status: 503,
      code: "auth_unavailable",
      message: "The project's signing keys could not be fetched; try again shortly.",
    });
  }
  return ["invalid_token", "The access token's signature is not valid."];
}

function parseJwks(text: string): jose.JSONWebKeySet {
  try {
    return JSON.parse(text);
  } catch {
    throw new Error("configuration: SUPABASE_JWKS is not valid JSON");
  }
}

const unauthorized = (code: string, message: string) =>
  new GatewayError({ status: 401, code, message, headers: { "www-authenticate": 'Bearer realm="tollgate"' } });
