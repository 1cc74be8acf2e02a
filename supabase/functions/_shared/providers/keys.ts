/**
 * The API keys configured for each provider, from the environment (Supabase secrets).
 * `<NAME>_API_KEY` is the key labelled `primary`; every `<NAME>_API_KEY_<SUFFIX>` is another
 * key of the same provider, labelled by its lower-cased suffix (`OPENAI_API_KEY_BATCH` →
 * `batch`). Several keys let traffic spread over accounts and survive a revoked key.
 *
 * Labels and fingerprints name a key to the database and in logs; the secret stays in the key
 * object's private field, so serializing or logging a key never shows it.
 */
import { createHash } from "node:crypto";

const PRIMARY_LABEL = "primary";

export class ProviderKey {
  readonly #secret: string;
  /** `sha256:` and the first 16 hex digits of the secret's SHA-256: tells keys apart, reveals nothing. */
  readonly fingerprint: string;

  constructor(
    readonly provider: string,
    readonly label: string,
    secret: string,
    /** 1-based place in the provider's key order: `primary` first, then the others by label. */
    readonly position: number,
  ) {
    this.#secret = secret;
    this.fingerprint = "sha256:" + createHash("sha256").update(secret).digest("hex").slice(0, 16);
  }

  /** The key itself: for the request's auth header, nowhere else. */
  get secret(): string {
    return this.#secret;
  }
}

/** The environment variables' prefix for a provider name: `together-ai` → `TOGETHER_AI`. */
export function envPrefix(provider: string): string {
  return provider.toUpperCase().replace(/[^A-Z0-9]/g, "_");
}

const suffixPattern = /^[A-Z0-9_]{1,32}$/;

/**
 * The provider's keys, in order. Empty values are skipped; so is `<NAME>_API_KEY_PRIMARY`, whose
 * label belongs to `<NAME>_API_KEY`.
 */
export function providerKeys(provider: string, env: Record<string, string | undefined>): ProviderKey[] {
  const base = `${envPrefix(provider)}_API_KEY`;
  const found: { label: string; secret: string }[] = [];
  for (const [name, secret] of Object.entries(env)) {
    if (!secret) continue;
    if (name === base) {
      found.push({ label: PRIMARY_LABEL, secret });
      continue;
    }
    if (!name.startsWith(`${base}_`)) continue;
    const suffix = name.slice(base.length + 1);
    const label = suffix.toLowerCase();
    if (suffixPattern.test(suffix) && label !== PRIMARY_LABEL) found.push({ label, secret });
  }
  // `primary` sorts as "", before every other label; plain code-unit order, the same everywhere.
  const sortKey = (label: string) => label === PRIMARY_LABEL ? "" : label;
  found.sort((a, b) => sortKey(a.label) < sortKey(b.label) ? -1 : 1);
  return found.map(({ label, secret }, index) => new ProviderKey(provider, label, secret, index + 1));
}
