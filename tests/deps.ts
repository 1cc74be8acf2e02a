// The clients that no one here wrote, pinned once for every test and benchmark.
export { default as OpenAI } from "npm:openai@7.57.0";
export { default as Anthropic } from "npm:@anthropic-ai/sdk@1.12.0";
export { createClient as createSupabaseClient } from "npm:@supabase/supabase-js@2.119.1";
