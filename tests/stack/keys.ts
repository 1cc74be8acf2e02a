/**
 * The local stand-in for Supabase Auth's signing keys: an ES256 key pair whose public half
 * is served as the project's JWKS, and access tokens shaped like the ones Supabase Auth issues.
 */
import * as jose from "jose";

export interface SigningKey {
  kid: string;
  privateJwk: jose.JWK;
  publicJwk: jose.JWK;
}

export async function generateSigningKey(): Promise<SigningKey> {
  const { privateKey, publicKey } = await jose.generateKeyPair("ES256", { extractable: true });
  const kid = crypto.randomUUID();
  const privateJwk = { ...(await jose.exportJWK(privateKey)), kid, alg: "ES256" };
  const publicJwk = { ...(await jose.exportJWK(publicKey)), kid, alg: "ES256", use: "sig" };
  return { kid, privateJwk, publicJwk };
}

export const jwksOf = (...keys: SigningKey[]) => ({ keys: keys.map((key) => key.publicJwk) });

export interface TokenClaims {
  sub: string;
  role?: string;
  email?: string;
  is_anonymous?: boolean;
  aud?: string;
  /** Seconds from now; negative for an expired token. */
  expiresIn?: number;
  [claim: string]: unknown;
}

/** An access token as Supabase Auth would issue it for `supabaseUrl`. */
export async function signAccessToken(
  key: SigningKey,
  supabaseUrl: string,
  { sub, role = "authenticated", aud = "authenticated", expiresIn = 3600, ...rest }: TokenClaims,
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return await new jose.SignJWT({ role, is_anonymous: false, aal: "aal1", session_id: crypto.randomUUID(), ...rest })
    .setProtectedHeader({ alg: "ES256", kid: key.kid, typ: "JWT" })
    .setSubject(sub)
    .setAudience(aud)
    .setIssuer(`${supabaseUrl}/auth/v1`)
    .setIssuedAt(now)
    .setExpirationTime(now + expiresIn)
    .sign(await jose.importJWK(key.privateJwk, "ES256"));
}
