import assert from "node:assert/strict";
import { calcPrice } from "@pydantic/genai-prices";
import {
  estimateCostMicros,
  estimateInputTokens,
  priceCall,
  type PriceOverride,
} from "../../supabase/functions/_shared/pricing.ts";
import type { Usage } from "../../supabase/functions/_shared/usage.ts";

// Expected values are computed by hand from the list prices (USD per million tokens, which is
// the same number as micro-dollars per token).

const usage = (parts: Partial<Usage>): Usage => ({
  inputTokens: 0,
  outputTokens: 0,
  cachedInputTokens: 0,
  cacheWriteTokens: 0,
  reasoningTokens: 0,
  ...parts,
});

Deno.test("gpt-4o-mini: input $0.15, output $0.60", () => {
  // 1000 × 0.15 + 500 × 0.60 = 150 + 300
  const call = usage({ inputTokens: 1000, outputTokens: 500 });
  assert.deepEqual(priceCall("openai", "gpt-4o-mini", call), {
    costMicros: 450,
    priced: true,
    source: "library",
  });
});

Deno.test("a dated snapshot is priced as its model", () => {
  const call = usage({ inputTokens: 1000, outputTokens: 500 });
  assert.equal(
    priceCall("openai", "gpt-4o-mini-2024-07-18", call).costMicros,
    450,
  );
  assert.equal(
    priceCall("anthropic", "claude-sonnet-4-5-20250929", call).costMicros,
    priceCall("anthropic", "claude-sonnet-4-5", call).costMicros,
  );
});

Deno.test("gpt-4o: cached input at the cache-read price, not also as input", () => {
  // OpenAI's prompt_tokens (10 000) includes cached_tokens (4 000).
  // 6000 × 2.50 + 4000 × 1.25 + 1000 × 10 = 15 000 + 5 000 + 10 000
  const call = usage({
    inputTokens: 10_000,
    cachedInputTokens: 4_000,
    outputTokens: 1_000,
  });
  assert.equal(priceCall("openai", "gpt-4o", call).costMicros, 30_000);
});

Deno.test("claude sonnet 4.5: cache read and cache write, each once", () => {
  // Anthropic reports input_tokens 2000, cache_read_input_tokens 6000 and
  // cache_creation_input_tokens 4000 apart; Usage.inputTokens is their sum.
  // 2000 × 3 + 6000 × 0.30 + 4000 × 3.75 + 500 × 15 = 6000 + 1800 + 15 000 + 7500
  const call = usage({
    inputTokens: 12_000,
    cachedInputTokens: 6_000,
    cacheWriteTokens: 4_000,
    outputTokens: 500,
  });
  assert.equal(
    priceCall("anthropic", "claude-sonnet-4-5-20250929", call).costMicros,
    30_300,
  );
});

Deno.test("claude sonnet 4.5: over 200k input every token costs the long-context price", () => {
  // 250 000 × 6 + 1000 × 22.50
  const call = usage({ inputTokens: 250_000, outputTokens: 1_000 });
  assert.equal(
    priceCall("anthropic", "claude-sonnet-4-5", call).costMicros,
    1_522_500,
  );
});

Deno.test("reasoning tokens are part of the output, not added again", () => {
  const plain = usage({ inputTokens: 100, outputTokens: 1_000 });
  const reasoning = { ...plain, reasoningTokens: 800 };
  // 100 × 1.10 + 1000 × 4.40 = 110 + 4400
  assert.equal(priceCall("openai", "o3-mini", reasoning).costMicros, 4_510);
  assert.equal(priceCall("openai", "o3-mini", plain).costMicros, 4_510);
});

const overrides: PriceOverride[] = [
  {
    provider: "openai",
    model: "gpt-4o-mini",
    inputPerMtok: "0.200000",
    outputPerMtok: "0.800000",
    cachedInputPerMtok: "0.100000",
    cacheWritePerMtok: null,
  },
  {
    provider: "local",
    model: "house-model",
    inputPerMtok: "0.35",
    outputPerMtok: "1",
  },
];

Deno.test("an override wins over the library, for the model and its snapshots", () => {
  // 600 × 0.20 + 400 × 0.10 + 100 × 0.80 = 120 + 40 + 80
  const call = usage({
    inputTokens: 1_000,
    cachedInputTokens: 400,
    outputTokens: 100,
  });
  const expected = { costMicros: 240, priced: true, source: "override" };
  assert.deepEqual(
    priceCall("openai", "gpt-4o-mini", call, overrides),
    expected,
  );
  assert.deepEqual(
    priceCall("openai", "gpt-4o-mini-2024-07-18", call, overrides),
    expected,
  );
  // The row is for openai only.
  assert.equal(
    priceCall("azure", "gpt-4o-mini", call, overrides).source,
    "library",
  );
});

Deno.test("an override without a cache price charges cached input as input", () => {
  // 1000 × 0.35 + 0 output
  const call = usage({ inputTokens: 1_000, cachedInputTokens: 1_000 });
  assert.equal(
    priceCall("local", "house-model", call, overrides).costMicros,
    350,
  );
});

Deno.test("compatible providers: by the library's provider id, else by model name", () => {
  const call = usage({ inputTokens: 1_000_000, outputTokens: 1_000_000 });
  // Groq's llama-3.1-8b-instant: 0.05 + 0.08 per million.
  assert.equal(
    priceCall("groq", "llama-3.1-8b-instant", call).costMicros,
    130_000,
  );
  // A provider the library does not know, serving a model it knows.
  assert.equal(priceCall("local", "gpt-4o-mini", call).costMicros, 750_000);
});

Deno.test("an unknown model is unpriced, never silently free", () => {
  const call = usage({ inputTokens: 1_000, outputTokens: 100 });
  assert.deepEqual(priceCall("local", "no-such-model-anywhere", call), {
    costMicros: 0,
    priced: false,
    source: "unpriced",
  });
});

Deno.test("exact sums, rounded half up once at the end", () => {
  // 1 × 2.50 = 2.5 → 3; 1 × 0.15 = 0.15 → 0
  assert.equal(
    priceCall("openai", "gpt-4o", usage({ inputTokens: 1 })).costMicros,
    3,
  );
  assert.equal(
    priceCall("openai", "gpt-4o-mini", usage({ inputTokens: 1 })).costMicros,
    0,
  );
  // 90 × 0.35 = 31.5 exactly, which floats compute as 31.499999999999996.
  assert.equal(
    priceCall("local", "house-model", usage({ inputTokens: 90 }), overrides)
      .costMicros,
    32,
  );
  // A billion tokens stay exact.
  const huge = usage({ inputTokens: 1e9, outputTokens: 1e9 });
  assert.equal(
    priceCall("openai", "gpt-4o-mini", huge).costMicros,
    750_000_000,
  );
});

Deno.test("agrees with the library's own (float) total", () => {
  const cases: [string, string, Usage][] = [
    ["openai", "gpt-4o-mini", usage({ inputTokens: 5_123, outputTokens: 777 })],
    [
      "openai",
      "gpt-4o",
      usage({ inputTokens: 9_999, cachedInputTokens: 8_888, outputTokens: 3 }),
    ],
    [
      "anthropic",
      "claude-sonnet-4-5-20250929",
      usage({
        inputTokens: 210_000,
        cachedInputTokens: 100_000,
        cacheWriteTokens: 50_000,
        outputTokens: 4_321,
      }),
    ],
    [
      "anthropic",
      "claude-3-5-haiku-latest",
      usage({ inputTokens: 4_740, cacheWriteTokens: 4_735, outputTokens: 255 }),
    ],
  ];
  for (const [provider, model, call] of cases) {
    const library = calcPrice(
      {
        input_tokens: call.inputTokens,
        cache_read_tokens: call.cachedInputTokens,
        cache_write_tokens: call.cacheWriteTokens,
        output_tokens: call.outputTokens,
      },
      model,
      { providerId: provider },
    );
    assert.ok(library, `${model} is in the library`);
    const ours = priceCall(provider, model, call).costMicros;
    assert.ok(
      Math.abs(ours - library.total_price * 1e6) <= 0.5 + 1e-6,
      `${model}: ${ours} µ$ vs library $${library.total_price}`,
    );
  }
});

Deno.test("usage that breaks the Usage contract is an error, not a price", () => {
  const tooManyCached = usage({ inputTokens: 10, cachedInputTokens: 11 });
  assert.throws(() => priceCall("openai", "gpt-4o", tooManyCached), RangeError);
  const fractional = usage({ inputTokens: 1.5 });
  assert.throws(() => priceCall("openai", "gpt-4o", fractional), RangeError);
});

Deno.test("estimateCostMicros: low is the input plus one output token, high the maximum", () => {
  // gpt-4o-mini, 1000 input: 150 + 0.6 → 151; 150 + 500 × 0.60 = 450
  assert.deepEqual(estimateCostMicros("openai", "gpt-4o-mini", 1_000, 500), {
    lowMicros: 151,
    highMicros: 450,
    priced: true,
  });
  assert.deepEqual(
    estimateCostMicros("local", "house-model", 1_000, 10, overrides),
    {
      lowMicros: 351,
      highMicros: 360,
      priced: true,
    },
  );
  assert.deepEqual(estimateCostMicros("local", "no-such-model", 1_000, 500), {
    lowMicros: 0,
    highMicros: 0,
    priced: false,
  });
});

Deno.test("estimateInputTokens: UTF-8 bytes / 4, rounded up", () => {
  assert.equal(estimateInputTokens(""), 0);
  assert.equal(estimateInputTokens("abcd"), 1);
  assert.equal(estimateInputTokens("abcde"), 2);
  assert.equal(estimateInputTokens("日本語です"), 4); // 15 bytes
});

Deno.test("speed of a price lookup (measured, not asserted)", () => {
  const call = usage({
    inputTokens: 1_000,
    cachedInputTokens: 200,
    outputTokens: 100,
  });
  const time = (model: string, times: number) => {
    const start = performance.now();
    for (let i = 0; i < times; i++) priceCall("openai", model, call);
    return (performance.now() - start) * 1000 / times;
  };
  const first = time("gpt-4.1-nano-2025-04-14", 1);
  const repeated = time("gpt-4.1-nano-2025-04-14", 10_000);
  const library = performance.now();
  for (let i = 0; i < 1_000; i++) {
    calcPrice({ input_tokens: 1_000 }, "gpt-4.1-nano-2025-04-14", {
      providerId: "openai",
    });
  }
  const libraryMicros = performance.now() - library;
  console.log(
    `priceCall: first lookup ${first.toFixed(1)} µs, then ${repeated.toFixed(2)} µs per call ` +
      `(calcPrice alone: ${libraryMicros.toFixed(1)} µs per call)`,
  );
});
