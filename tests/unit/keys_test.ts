import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { envPrefix, type ProviderKey, providerKeys } from "../../supabase/functions/_shared/providers/keys.ts";
import { providerEndpoints } from "../../supabase/functions/_shared/providers/registry.ts";

const fingerprint = (secret: string) => "sha256:" + createHash("sha256").update(secret).digest("hex").slice(0, 16);

/** A key as [provider, label, secret, position]. */
const summary = (key: ProviderKey) => [key.provider, key.label, key.secret, key.position];

Deno.test("env prefix of a provider name", () => {
  const cases: [string, string][] = [
    ["openai", "OPENAI"],
    ["together-ai", "TOGETHER_AI"],
    ["azure.eu", "AZURE_EU"],
    ["x2", "X2"],
  ];
  for (const [name, prefix] of cases) assert.equal(envPrefix(name), prefix);
});

Deno.test("a provider's keys: primary first, then the others by label", () => {
  const cases: [string, Record<string, string | undefined>, (string | number)[][]][] = [
    ["openai", {}, []],
    ["openai", { OPENAI_API_KEY: "sk-1" }, [["openai", "primary", "sk-1", 1]]],
    ["openai", { OPENAI_API_KEY_ZETA: "sk-z", OPENAI_API_KEY_BATCH: "sk-b", OPENAI_API_KEY: "sk-1" }, [
      ["openai", "primary", "sk-1", 1],
      ["openai", "batch", "sk-b", 2],
      ["openai", "zeta", "sk-z", 3],
    ]],
    // Without a primary the first other key comes first.
    ["openai", { OPENAI_API_KEY_B: "sk-b", OPENAI_API_KEY_A_2: "sk-a" }, [
      ["openai", "a_2", "sk-a", 1],
      ["openai", "b", "sk-b", 2],
    ]],
    // Empty values, bad suffixes, the reserved `primary` suffix and other providers are skipped.
    ["openai", {
      OPENAI_API_KEY: "",
      OPENAI_API_KEY_EMPTY: undefined,
      OPENAI_API_KEY_: "sk-none",
      OPENAI_API_KEY_lower: "sk-lower",
      "OPENAI_API_KEY_DASH-1": "sk-dash",
      ["OPENAI_API_KEY_" + "X".repeat(33)]: "sk-long",
      OPENAI_API_KEY_PRIMARY: "sk-p",
      OPENAI_BASE_URL: "https://example.test/v1",
      GROQ_API_KEY: "gsk",
      ["OPENAI_API_KEY_" + "Y".repeat(32)]: "sk-32",
    }, [["openai", "y".repeat(32), "sk-32", 1]]],
    ["together-ai", { TOGETHER_AI_API_KEY_TWO: "t2", TOGETHER_AI_API_KEY: "t1" }, [
      ["together-ai", "primary", "t1", 1],
      ["together-ai", "two", "t2", 2],
    ]],
  ];
  for (const [provider, env, expected] of cases) {
    assert.deepEqual(providerKeys(provider, env).map(summary), expected, JSON.stringify(env));
  }
});

Deno.test("a key's fingerprint names it; serializing or logging it never shows the secret", () => {
  const [key] = providerKeys("openai", { OPENAI_API_KEY: "sk-secret-123" });
  assert.equal(key.fingerprint, fingerprint("sk-secret-123"));
  assert.match(key.fingerprint, /^sha256:[0-9a-f]{16}$/);
  assert.equal(key.secret, "sk-secret-123");
  assert.deepEqual(JSON.parse(JSON.stringify(key)), {
    provider: "openai",
    label: "primary",
    fingerprint: fingerprint("sk-secret-123"),
    position: 1,
  });
  assert.ok(!Deno.inspect(key).includes("sk-secret"));
  assert.ok(!Deno.inspect({ ...key }).includes("sk-secret"));
});

Deno.test("registry: one endpoint per key, each authenticating with its own secret", () => {
  const env = {
    OPENAI_API_KEY: "sk-1",
    OPENAI_API_KEY_BATCH: "sk-b",
    ANTHROPIC_API_KEY_BACKUP: "ant-b",
    ANTHROPIC_BASE_URL: "http://127.0.0.1:9/",
    MISTRAL_API_KEY: "m",
  };
  const auth = (endpoint: { headers: Record<string, string> } | undefined) =>
    endpoint?.headers.authorization ?? endpoint?.headers["x-api-key"];
  assert.deepEqual(
    providerEndpoints("openai", env).map((e) => [e.keyLabel, e.url, auth(e)]),
    [
      ["primary", "https://api.openai.com/v1/chat/completions", "Bearer sk-1"],
      ["batch", "https://api.openai.com/v1/chat/completions", "Bearer sk-b"],
    ],
  );
  assert.deepEqual(providerEndpoints("anthropic", env).map((e) => [e.keyLabel, e.url, e.format, auth(e)]), [
    ["backup", "http://127.0.0.1:9/v1/messages", "anthropic", "ant-b"],
  ]);
  // No base URL: not usable, however many keys; no key: not usable either.
  assert.deepEqual(providerEndpoints("mistral", env), []);
  assert.deepEqual(providerEndpoints("groq", env), []);
  assert.deepEqual(
    providerEndpoints("mistral", { ...env, MISTRAL_BASE_URL: "https://api.mistral.test/v1" }).map((e) => e.url),
    ["https://api.mistral.test/v1/chat/completions"],
  );
});
