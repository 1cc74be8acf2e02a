/**
 * Tells the database which provider keys this instance serves with — label and fingerprint,
 * never the key — so admission can choose among them, skip dead or over-budget ones, and
 * settlement can track each. Once per provider per instance, the first time a route names it,
 * in the background: the first call of an instance simply uses the provider's first key.
 */
import type { Ledger } from "./db.ts";
import type { RouteStep } from "./ledger.ts";
import { providerKeys } from "./providers/keys.ts";
import { inBackground } from "./runtime.ts";

export function createKeyRegistry(env: Record<string, string | undefined>, ledger: Ledger) {
  const registered = new Set<string>();
  return (route: RouteStep[]): void => {
    for (const { provider } of route) {
      if (registered.has(provider)) continue;
      registered.add(provider);
      const keys = providerKeys(provider, env)
        .map(({ label, fingerprint, position }) => ({ provider, label, fingerprint, position }));
      if (!keys.length) continue;
      inBackground(
        ledger.registerKeys(keys).catch((error) => {
          registered.delete(provider); // the next call tries again
          console.warn(`registering the ${provider} keys failed: ${error instanceof Error ? error.message : error}`);
        }),
      );
    }
  };
}
