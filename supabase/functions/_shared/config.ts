/**
 * The gateway's settings, read once per isolate from the environment (Supabase secrets).
 * Every setting is documented in the README with its default.
 */
import { z } from "zod";

const jsonRecord = z.string().transform((text, ctx) => {
  try {
    return z.record(z.string(), z.string()).parse(JSON.parse(text));
  } catch {
    ctx.addIssue({ code: "custom", message: "must be a JSON object of strings" });
    return z.NEVER;
  }
});

const environment = z.object({
  SUPABASE_URL: z.url(),
  /** Direct connection on hosted Supabase; TOLLGATE_DB_URL (e.g. the transaction pooler) wins when set. */
  SUPABASE_DB_URL: z.string().min(1).optional(),
  TOLLGATE_DB_URL: z.string().min(1).optional(),
  /** Inline JWKS (hosted Supabase sets it); otherwise fetched from SUPABASE_URL. */
  SUPABASE_JWKS: z.string().optional(),
  /** Legacy HS256 JWT secret, for projects that still sign user tokens with it. */
  TOLLGATE_LEGACY_JWT_SECRET: z.string().min(32).optional(),
  SUPABASE_SECRET_KEYS: jsonRecord.optional(),
  SUPABASE_SERVICE_ROLE_KEY: z.string().optional(),
  /** What to do when the database cannot be reached: refuse (default) or serve unmetered. */
  TOLLGATE_DB_UNAVAILABLE: z.enum(["fail_closed", "fail_open"]).default("fail_closed"),
  TOLLGATE_MAX_BODY_BYTES: z.coerce.number().int().positive().default(4 * 1024 * 1024),
  /** Per provider attempt: time allowed until the response headers (and a JSON answer's body). */
  TOLLGATE_ATTEMPT_TIMEOUT_MS: z.coerce.number().int().positive().default(60_000),
  /**
   * All attempts and fallbacks together. The edge runtime answers 504 when no byte was sent
   * for 150 s, so the default keeps a 30 s margin under it.
   */
  TOLLGATE_DEADLINE_MS: z.coerce.number().int().positive().max(150_000).default(120_000),
  /** A stream with no chunk for this long is ended with an error event. */
  TOLLGATE_STREAM_IDLE_TIMEOUT_MS: z.coerce.number().int().positive().default(60_000),
  /**
   * A stream is ended (with an error event) before the worker's wall clock runs out:
   * 150 s on the free plan, 400 s on paid plans. Raise it on a paid plan.
   */
  TOLLGATE_STREAM_MAX_MS: z.coerce.number().int().positive().max(400_000).default(140_000),
  /** Where the function posts budget alerts (Slack-compatible JSON) when the database cannot. */
  TOLLGATE_ALERT_WEBHOOK_URL: z.url({ protocol: /^https?$/ }).optional(),
  /** Least time between two alert deliveries by one isolate. */
  TOLLGATE_ALERT_POLL_SECONDS: z.coerce.number().int().nonnegative().default(30),
  /** Comma-separated origins allowed by CORS, or `*`. */
  TOLLGATE_CORS_ORIGINS: z.string().default("*"),
});

export type Config = ReturnType<typeof readConfig>;

export function readConfig(env: Record<string, string | undefined>) {
  const parsed = environment.safeParse(env);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`configuration: ${issue.path.join(".")} ${issue.message}`);
  }
  const settings = parsed.data;
  const dbUrl = settings.TOLLGATE_DB_URL ?? settings.SUPABASE_DB_URL;
  if (!dbUrl) throw new Error("configuration: SUPABASE_DB_URL (or TOLLGATE_DB_URL) is not set");
  return {
    supabaseUrl: settings.SUPABASE_URL.replace(/\/$/, ""),
    dbUrl,
    /** Through a transaction pooler prepared statements cannot be used. */
    dbViaPooler: settings.TOLLGATE_DB_URL !== undefined,
    jwks: settings.SUPABASE_JWKS,
    legacyJwtSecret: settings.TOLLGATE_LEGACY_JWT_SECRET,
    secretKeys: [
      ...Object.values(settings.SUPABASE_SECRET_KEYS ?? {}),
      ...(settings.SUPABASE_SERVICE_ROLE_KEY ? [settings.SUPABASE_SERVICE_ROLE_KEY] : []),
    ],
    failOpen: settings.TOLLGATE_DB_UNAVAILABLE === "fail_open",
    maxBodyBytes: settings.TOLLGATE_MAX_BODY_BYTES,
    attemptTimeoutMs: settings.TOLLGATE_ATTEMPT_TIMEOUT_MS,
    deadlineMs: settings.TOLLGATE_DEADLINE_MS,
    streamIdleTimeoutMs: settings.TOLLGATE_STREAM_IDLE_TIMEOUT_MS,
    streamMaxMs: settings.TOLLGATE_STREAM_MAX_MS,
    alertWebhookUrl: settings.TOLLGATE_ALERT_WEBHOOK_URL,
    alertPollSeconds: settings.TOLLGATE_ALERT_POLL_SECONDS,
    corsOrigins: settings.TOLLGATE_CORS_ORIGINS.split(",").map((origin) => origin.trim()),
    env,
  };
}
