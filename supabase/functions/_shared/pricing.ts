/**
 * What one provider call cost, in integer micro-dollars (1 USD = 1_000_000 µ$).
 *
 * Prices come from the `model_prices` table when it has a row for the model (an operator's
 * override always wins), else from `@pydantic/genai-prices`, a maintained catalogue that knows
 * cache-read, cache-write and long-context (tiered) prices and matches dated snapshots such as
 * `gpt-4o-mini-2024-07-18` to their model. The library only finds the price; the arithmetic is
 * ours, exact: every price is a decimal, every count an integer, the sum a BigInt, rounded half
 * up once at the end. Floats would drift, and a cost is summed over millions of calls.
 *
 * A price in USD per million tokens is the same number as micro-dollars per token, so a term
 * of the sum is simply `tokens × price`.
 */

import { calcPrice, type ModelPrice } from "@pydantic/genai-prices";
import type { Usage } from "./usage.ts";

/** One row of `model_prices`: USD per million tokens, as numeric strings (or numbers). */
export interface PriceOverride {
  provider: string;
  model: string;
  inputPerMtok: string | number;
  outputPerMtok: string | number;
  /** Null: the model has no cache discount, cache reads cost the input price. */
  cachedInputPerMtok?: string | number | null;
  /** Null: cache writes cost the input price. */
  cacheWritePerMtok?: string | number | null;
}

/**
 * The cost of a call. `priced: false` means no price is known for the model: the cost is NOT
 * zero, it is unknown, and the caller records the call with that flag.
 */
export interface Price {
  costMicros: number;
  priced: boolean;
  source: "override" | "library" | "unpriced";
}

/** A cost range for a call not made yet (admission's reservation, `/v1/estimate`). */
export interface CostEstimate {
  /** The input alone, plus one output token. */
  lowMicros: number;
  /** The input plus every output token the call may produce. */
  highMicros: number;
  priced: boolean;
}

/**
 * Prices `usage` for `model` on `provider` (`openai`, `anthropic`, or the name of an
 * OpenAI-compatible provider; the library knows many by name, else the model name decides).
 * Cache reads are charged at the cache-read price and cache writes at the cache-write price,
 * each once and not also as plain input; reasoning tokens are inside `outputTokens` and are
 * not added again. Throws a RangeError for usage that breaks the `Usage` contract (a cached
 * count larger than the input it is part of): that is an adapter bug, not a price.
 */
export function priceCall(
  provider: string,
  model: string,
  usage: Usage,
  overrides: readonly PriceOverride[] = [],
): Price {
  checkUsage(usage);
  const override = findOverride(overrides, provider, model);
  if (override) {
    return {
      costMicros: costMicros(usage, overrideRates(override)),
      priced: true,
      source: "override",
    };
  }
  const modelPrice = libraryPrice(provider, model);
  if (modelPrice) {
    const rates = libraryRates(modelPrice, usage.inputTokens);
    return {
      costMicros: costMicros(usage, rates),
      priced: true,
      source: "library",
    };
  }
  return { costMicros: 0, priced: false, source: "unpriced" };
}

/** The cost range of a call with `inputTokens` of input that may write `maxOutputTokens`. */
export function estimateCostMicros(
  provider: string,
  model: string,
  inputTokens: number,
  maxOutputTokens: number,
  overrides: readonly PriceOverride[] = [],
): CostEstimate {
  const price = (outputTokens: number) =>
    priceCall(
      provider,
      model,
      { ...noCache, inputTokens, outputTokens },
      overrides,
    );
  const low = price(1);
  return {
    lowMicros: low.costMicros,
    highMicros: price(maxOutputTokens).costMicros,
    priced: low.priced,
  };
}

/**
 * A rough, deterministic token count for text not sent yet: UTF-8 bytes / 4, rounded up. Use it
 * ONLY to size a reservation before a call; settlement always uses the usage the provider
 * reported. Bytes rather than characters so that scripts with several bytes per character
 * (CJK, emoji), which also cost more tokens per character, are not badly underestimated.
 */
export function estimateInputTokens(text: string): number {
  return Math.ceil(utf8.encode(text).byteLength / 4);
}

const utf8 = new TextEncoder();
const noCache = {
  cachedInputTokens: 0,
  cacheWriteTokens: 0,
  reasoningTokens: 0,
};

// ---------------------------------------------------------------------------------------------
// Rates: the prices that apply to one call, as exact decimals (USD per million = µ$ per token).
// A missing rate means the model does not price that part separately: cache tokens then stay
// in (and are charged as) plain input, reasoning tokens as plain output — as the library does.

interface Rates {
  input?: Decimal;
  output?: Decimal;
  cacheRead?: Decimal;
  cacheWrite?: Decimal;
  reasoning?: Decimal;
  /** USD per thousand requests (a few providers charge per call, e.g. Perplexity's search). */
  perThousandRequests?: Decimal;
}

function costMicros(usage: Usage, rates: Rates): number {
  const separately = (rate: Decimal | undefined, tokens: number) => rate ? tokens : 0;
  const cacheRead = separately(rates.cacheRead, usage.cachedInputTokens);
  const cacheWrite = separately(rates.cacheWrite, usage.cacheWriteTokens);
  const reasoning = separately(rates.reasoning, usage.reasoningTokens);
  const plainInput = usage.inputTokens - cacheRead - cacheWrite;
  const plainOutput = usage.outputTokens - reasoning;
  if (plainInput < 0 || plainOutput < 0) {
    throw new RangeError(
      `usage parts exceed their totals: ${JSON.stringify(usage)}`,
    );
  }
  return roundHalfUp([
    [plainInput, rates.input],
    [cacheRead, rates.cacheRead],
    [cacheWrite, rates.cacheWrite],
    [plainOutput, rates.output],
    [reasoning, rates.reasoning],
    [1000, rates.perThousandRequests], // µ$ per request = USD per thousand × 1000
  ]);
}

function checkUsage(usage: Usage): void {
  for (const [name, value] of Object.entries(usage)) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(
        `usage.${name} must be a non-negative integer, got ${value}`,
      );
    }
  }
}

function overrideRates(row: PriceOverride): Rates {
  const optional = (value: string | number | null | undefined) =>
    value === null || value === undefined ? undefined : parseDecimal(value);
  return {
    input: parseDecimal(row.inputPerMtok),
    output: parseDecimal(row.outputPerMtok),
    cacheRead: optional(row.cachedInputPerMtok),
    cacheWrite: optional(row.cacheWritePerMtok),
  };
}

/** The library's prices for this call; its whole input, cache included, picks the tier. */
function libraryRates(prices: ModelPrice, inputTokens: number): Rates {
  const rate = (key: string): Decimal | undefined => {
    const price = prices[key];
    if (price === undefined) return undefined;
    if (typeof price === "number") return parseDecimal(price);
    // Long-context pricing: the highest tier whose start the input exceeds prices every token.
    let chosen = price.base;
    for (const tier of [...price.tiers].sort((a, b) => a.start - b.start)) {
      if (inputTokens > tier.start) chosen = tier.price;
    }
    return parseDecimal(chosen);
  };
  return {
    input: rate("input_mtok"),
    output: rate("output_mtok"),
    cacheRead: rate("cache_read_mtok"),
    cacheWrite: rate("cache_write_mtok"),
    reasoning: rate("output_reasoning_mtok"),
    perThousandRequests: rate("requests_kcount"),
  };
}

// ---------------------------------------------------------------------------------------------
// Finding the price.

/** An override for the exact model, else for the model without its snapshot date. */
function findOverride(
  overrides: readonly PriceOverride[],
  provider: string,
  model: string,
): PriceOverride | undefined {
  const exact = model.toLowerCase();
  const undated = exact.replace(snapshotDate, "");
  const rowFor = (name: string) =>
    overrides.find((row) => row.provider === provider && row.model.toLowerCase() === name);
  return rowFor(exact) ?? (undated === exact ? undefined : rowFor(undated));
}

// `-2024-07-18` (OpenAI) or `-20250929` (Anthropic) at the end of a model name.
const snapshotDate = /-(?:\d{4}-\d{2}-\d{2}|\d{8})$/;

// A library lookup scans every model of a provider with its match rules: about 20 µs for
// OpenAI's list, against well under 1 µs from this map. Bounded because model names come from
// requests; the library's data is bundled and never changes while the isolate lives.
const lookups = new Map<string, ModelPrice | null>();
const maxLookups = 1000;

/**
 * The library's price for the model: under the provider's own id first (`openai`, `anthropic`,
 * `groq`, `deepseek`…), then by the model name alone, which is how a compatible provider with a
 * name of our own (say `local` serving `gpt-4o-mini`) still gets a price.
 */
function libraryPrice(provider: string, model: string): ModelPrice | undefined {
  const key = `${provider}\n${model}`;
  const remembered = lookups.get(key);
  if (remembered !== undefined) return remembered ?? undefined;

  const found = calcPrice({}, model, { providerId: provider }) ??
    calcPrice({}, model);
  // Prices that depend on the time of day or a start date are looked up on every call.
  if (!found || !Array.isArray(found.model.prices)) {
    if (lookups.size >= maxLookups) lookups.clear();
    lookups.set(key, found?.model_price ?? null);
  }
  return found?.model_price;
}

// ---------------------------------------------------------------------------------------------
// Exact decimal arithmetic.

/** A non-negative decimal, exactly: `units / 10^scale`. */
interface Decimal {
  units: bigint;
  scale: number;
}

/** Parses `"0.15"`, `"3.750000"` (Postgres numeric), `0.075` or `1e-7` without rounding. */
function parseDecimal(value: string | number): Decimal {
  // A number prints as its shortest round-trip decimal: 0.075 → "0.075", the price as written.
  const match = /^(\d+)(?:\.(\d*))?(?:e([+-]?\d+))?$/i.exec(
    String(value).trim(),
  );
  if (!match) {
    throw new RangeError(`not a non-negative decimal price: ${value}`);
  }
  const [, whole, fraction = "", exponent = "0"] = match;
  const scale = fraction.length - Number(exponent);
  const units = BigInt(whole + fraction);
  return scale >= 0 ? { units, scale } : { units: units * 10n ** BigInt(-scale), scale: 0 };
}

/** Σ count × rate, rounded half up to an integer; terms without a rate count nothing. */
function roundHalfUp(
  terms: [count: number, rate: Decimal | undefined][],
): number {
  const priced = terms.filter((term): term is [number, Decimal] => term[1] !== undefined);
  const scale = Math.max(0, ...priced.map(([, rate]) => rate.scale));
  let sum = 0n;
  for (const [count, rate] of priced) {
    sum += BigInt(count) * rate.units * 10n ** BigInt(scale - rate.scale);
  }
  const one = 10n ** BigInt(scale);
  return Number((2n * sum + one) / (2n * one));
}
