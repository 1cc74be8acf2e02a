/**
 * Token usage of one provider call, as the provider reported it.
 *
 * `inputTokens` counts every input token, cached ones included; `cachedInputTokens` and
 * `cacheWriteTokens` say how many of them were read from / written to the provider's prompt
 * cache (priced differently). `reasoningTokens` are part of `outputTokens`.
 */
export interface Usage {
  inputTokens: number;
  outputTokens: number;
  cachedInputTokens: number;
  cacheWriteTokens: number;
  reasoningTokens: number;
}

export const emptyUsage = (): Usage => ({
  inputTokens: 0,
  outputTokens: 0,
  cachedInputTokens: 0,
  cacheWriteTokens: 0,
  reasoningTokens: 0,
});
