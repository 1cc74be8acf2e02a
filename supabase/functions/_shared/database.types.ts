export type Json = string | number | boolean | null | { [key: string]: Json | undefined } | Json[];

export type Database = {
  "public": {
    Tables: {
      "ai_api_calls": {
        Row: {
          "attempts": number;
          "cache_write_tokens": number;
          "cached": boolean | null;
          "cached_input_tokens": number;
          "created_at": string | null;
          "endpoint": string | null;
          "error_code": string | null;
          "estimated_cost": number;
          "fallback_from": string | null;
          "feature": string;
          "id": string;
          "input_tokens": number;
          "latency_ms": number;
          "model": string;
          "output_tokens": number;
          "priced": boolean;
          "provider": string;
          "provider_key": string | null;
          "reasoning_tokens": number;
          "request_id": string;
          "saved_cost": number;
          "settled_at": string;
          "status": string | null;
          "streamed": boolean;
          "user_id": string | null;
        };
        ComputedFields: never;
        Insert: {
          "attempts"?: number;
          "cache_write_tokens"?: number;
          "cached"?: boolean | null;
          "cached_input_tokens"?: number;
          "created_at"?: string | null;
          "endpoint"?: string | null;
          "error_code"?: string | null;
          "estimated_cost": number;
          "fallback_from"?: string | null;
          "feature": string;
          "id"?: string;
          "input_tokens": number;
          "latency_ms": number;
          "model": string;
          "output_tokens": number;
          "priced"?: boolean;
          "provider": string;
          "provider_key"?: string | null;
          "reasoning_tokens"?: number;
          "request_id": string;
          "saved_cost"?: number;
          "settled_at"?: string;
          "status"?: string | null;
          "streamed"?: boolean;
          "user_id"?: string | null;
        };
        Update: {
          "attempts"?: number;
          "cache_write_tokens"?: number;
          "cached"?: boolean | null;
          "cached_input_tokens"?: number;
          "created_at"?: string | null;
          "endpoint"?: string | null;
          "error_code"?: string | null;
          "estimated_cost"?: number;
          "fallback_from"?: string | null;
          "feature"?: string;
          "id"?: string;
          "input_tokens"?: number;
          "latency_ms"?: number;
          "model"?: string;
          "output_tokens"?: number;
          "priced"?: boolean;
          "provider"?: string;
          "provider_key"?: string | null;
          "reasoning_tokens"?: number;
          "request_id"?: string;
          "saved_cost"?: number;
          "settled_at"?: string;
          "status"?: string | null;
          "streamed"?: boolean;
          "user_id"?: string | null;
        };
        Relationships: [];
      };
      "api_usage": {
        Row: {
          "budget_ids": (number)[];
          "cached": boolean;
          "created_at": string;
          "estimated_cost": number;
          "estimated_input_tokens": number;
          "feature": string;
          "holds_upstream_slot": boolean;
          "max_output_tokens": number;
          "model": string;
          "provider": string;
          "provider_key": string | null;
          "request_id": string;
          "reserved_cost": number;
          "settled_at": string | null;
          "status": string;
          "tokens_used": number;
          "user_id": string;
        };
        ComputedFields: never;
        Insert: {
          "budget_ids"?: (number)[];
          "cached"?: boolean;
          "created_at"?: string;
          "estimated_cost"?: number;
          "estimated_input_tokens"?: number;
          "feature": string;
          "holds_upstream_slot"?: boolean;
          "max_output_tokens"?: number;
          "model": string;
          "provider": string;
          "provider_key"?: string | null;
          "request_id": string;
          "reserved_cost"?: number;
          "settled_at"?: string | null;
          "status"?: string;
          "tokens_used"?: number;
          "user_id": string;
        };
        Update: {
          "budget_ids"?: (number)[];
          "cached"?: boolean;
          "created_at"?: string;
          "estimated_cost"?: number;
          "estimated_input_tokens"?: number;
          "feature"?: string;
          "holds_upstream_slot"?: boolean;
          "max_output_tokens"?: number;
          "model"?: string;
          "provider"?: string;
          "provider_key"?: string | null;
          "request_id"?: string;
          "reserved_cost"?: number;
          "settled_at"?: string | null;
          "status"?: string;
          "tokens_used"?: number;
          "user_id"?: string;
        };
        Relationships: [];
      };
      "user_usage_daily": {
        Row: {
          "cache_hits": number;
          "calls": number;
          "cost_usd": number;
          "day": string;
          "errors": number;
          "input_tokens": number;
          "output_tokens": number;
          "reserved_cost_usd": number;
          "reserved_tokens": number;
          "updated_at": string;
          "user_id": string;
        };
        ComputedFields: never;
        Insert: {
          "cache_hits"?: number;
          "calls"?: number;
          "cost_usd"?: number;
          "day": string;
          "errors"?: number;
          "input_tokens"?: number;
          "output_tokens"?: number;
          "reserved_cost_usd"?: number;
          "reserved_tokens"?: number;
          "updated_at"?: string;
          "user_id": string;
        };
        Update: {
          "cache_hits"?: number;
          "calls"?: number;
          "cost_usd"?: number;
          "day"?: string;
          "errors"?: number;
          "input_tokens"?: number;
          "output_tokens"?: number;
          "reserved_cost_usd"?: number;
          "reserved_tokens"?: number;
          "updated_at"?: string;
          "user_id"?: string;
        };
        Relationships: [];
      };
    };
    Views: {
      "budget_alerts": {
        Row: {
          "attempts": number;
          "budget": string | null;
          "created_at": string;
          "delivered_at": string | null;
          "delivered_via": string | null;
          "delivery": string | null;
          "id": number;
          "kind": string;
          "last_error": string | null;
          "limit_usd": number | null;
          "message": string;
          "next_attempt_at": string;
          "period": string | null;
          "projection_usd": number | null;
          "severity": string;
          "spend_usd": number | null;
          "threshold": number | null;
          "user_id": string | null;
        };
        ComputedFields: never;
        Insert: {
          "attempts"?: number | null;
          "budget"?: string | null;
          "created_at"?: string | null;
          "delivered_at"?: string | null;
          "delivered_via"?: string | null;
          "delivery"?: never;
          "id"?: number | null;
          "kind"?: string | null;
          "last_error"?: string | null;
          "limit_usd"?: number | null;
          "message"?: string | null;
          "next_attempt_at"?: string | null;
          "period"?: string | null;
          "projection_usd"?: number | null;
          "severity"?: string | null;
          "spend_usd"?: number | null;
          "threshold"?: number | null;
          "user_id"?: string | null;
        };
        Update: {
          "attempts"?: number | null;
          "budget"?: string | null;
          "created_at"?: string | null;
          "delivered_at"?: string | null;
          "delivered_via"?: string | null;
          "delivery"?: never;
          "id"?: number | null;
          "kind"?: string | null;
          "last_error"?: string | null;
          "limit_usd"?: number | null;
          "message"?: string | null;
          "next_attempt_at"?: string | null;
          "period"?: string | null;
          "projection_usd"?: number | null;
          "severity"?: string | null;
          "spend_usd"?: number | null;
          "threshold"?: number | null;
          "user_id"?: string | null;
        };
        Relationships: [];
      };
      "budget_status": {
        Row: {
          "budget_id": number;
          "calls": number | null;
          "exempt_critical": boolean;
          "feature": string | null;
          "hard_cap": boolean;
          "month": string | null;
          "monthly_limit_usd": number;
          "percent_committed": number | null;
          "percent_used": number | null;
          "projected_percent": number | null;
          "projected_spend_usd": number | null;
          "remaining_usd": number | null;
          "reserved_usd": number | null;
          "scope": string;
          "spent_usd": number | null;
          "thresholds": (number)[];
        };
        ComputedFields: never;
        Relationships: [];
      };
      "cost_by_feature": {
        Row: {
          "avg_cost_per_call": number | null;
          "cache_hits": number | null;
          "client_closed": number | null;
          "errors": number | null;
          "expired": number | null;
          "fallbacks": number | null;
          "feature": string;
          "month": string | null;
          "percent_of_month": number | null;
          "saved_cost": number | null;
          "total_calls": number | null;
          "total_cost": number | null;
          "total_input_tokens": number | null;
          "total_output_tokens": number | null;
          "unpriced": number | null;
        };
        ComputedFields: never;
        Relationships: [];
      };
      "cost_by_user": {
        Row: {
          "cache_hits": number | null;
          "email": string | null;
          "errors": number | null;
          "month": string | null;
          "rank": number | null;
          "reserved_cost": number | null;
          "total_calls": number | null;
          "total_cost": number | null;
          "total_tokens": number | null;
          "user_id": string;
        };
        ComputedFields: never;
        Relationships: [];
      };
      "daily_cost_summary": {
        Row: {
          "avg_latency_ms": number | null;
          "cache_hits": number | null;
          "day": string | null;
          "errors": number | null;
          "model": string;
          "provider": string;
          "total_calls": number | null;
          "total_cost": number | null;
          "total_input_tokens": number | null;
          "total_output_tokens": number | null;
        };
        ComputedFields: never;
        Relationships: [];
      };
      "my_usage": {
        Row: {
          "cache_hits": number;
          "calls": number;
          "cost_usd": number;
          "day": string;
          "errors": number;
          "input_tokens": number;
          "output_tokens": number;
          "reserved_cost_usd": number;
          "reserved_tokens": number;
          "total_tokens": number | null;
        };
        ComputedFields: never;
        Insert: {
          "cache_hits"?: number | null;
          "calls"?: number | null;
          "cost_usd"?: number | null;
          "day"?: string | null;
          "errors"?: number | null;
          "input_tokens"?: number | null;
          "output_tokens"?: number | null;
          "reserved_cost_usd"?: number | null;
          "reserved_tokens"?: number | null;
          "total_tokens"?: never;
        };
        Update: {
          "cache_hits"?: number | null;
          "calls"?: number | null;
          "cost_usd"?: number | null;
          "day"?: string | null;
          "errors"?: number | null;
          "input_tokens"?: number | null;
          "output_tokens"?: number | null;
          "reserved_cost_usd"?: number | null;
          "reserved_tokens"?: number | null;
          "total_tokens"?: never;
        };
        Relationships: [];
      };
      "provider_headroom": {
        Row: {
          "fingerprint": string;
          "free_calls": number | null;
          "in_flight": number | null;
          "label": string;
          "max_in_flight": number | null;
          "provider": string;
          "remaining_requests": number | null;
          "remaining_tokens": number | null;
          "requests_reset_at": string | null;
          "state": string;
          "tokens_reset_at": string | null;
          "usable": boolean | null;
          "waiting": number | null;
        };
        ComputedFields: never;
        Insert: {
          "fingerprint"?: string | null;
          "free_calls"?: never;
          "in_flight"?: never;
          "label"?: string | null;
          "max_in_flight"?: number | null;
          "provider"?: string | null;
          "remaining_requests"?: never;
          "remaining_tokens"?: never;
          "requests_reset_at"?: string | null;
          "state"?: string | null;
          "tokens_reset_at"?: string | null;
          "usable"?: never;
          "waiting"?: never;
        };
        Update: {
          "fingerprint"?: string | null;
          "free_calls"?: never;
          "in_flight"?: never;
          "label"?: string | null;
          "max_in_flight"?: number | null;
          "provider"?: string | null;
          "remaining_requests"?: never;
          "remaining_tokens"?: never;
          "requests_reset_at"?: string | null;
          "state"?: string | null;
          "tokens_reset_at"?: string | null;
          "usable"?: never;
          "waiting"?: never;
        };
        Relationships: [];
      };
      "provider_key_spend": {
        Row: {
          "calls": number | null;
          "cost_usd": number | null;
          "daily_budget_usd": number | null;
          "day": string;
          "expires_on": string | null;
          "fingerprint": string | null;
          "input_tokens": number | null;
          "label": string;
          "output_tokens": number | null;
          "percent_of_budget": number | null;
          "provider": string;
          "state": string | null;
        };
        ComputedFields: never;
        Relationships: [];
      };
      "rejections_by_layer": {
        Row: {
          "code": string;
          "day": string | null;
          "feature": string | null;
          "layer": string;
          "rejections": number | null;
          "users": number | null;
        };
        ComputedFields: never;
        Relationships: [];
      };
    };
    Functions: {
      [_ in never]: never;
    };
    Enums: {
      [_ in never]: never;
    };
    CompositeTypes: {
      [_ in never]: never;
    };
  };
  "tollgate": {
    Tables: {
      "abandoned_requests": {
        Row: {
          "abandoned_at": string;
          "released": boolean;
          "request_id": string;
          "user_id": string;
        };
        ComputedFields: never;
        Insert: {
          "abandoned_at"?: string;
          "released": boolean;
          "request_id": string;
          "user_id": string;
        };
        Update: {
          "abandoned_at"?: string;
          "released"?: boolean;
          "request_id"?: string;
          "user_id"?: string;
        };
        Relationships: [];
      };
      "budget_alerts": {
        Row: {
          "attempts": number;
          "budget": string | null;
          "budget_id": number | null;
          "created_at": string;
          "dedup_key": string;
          "delivered_at": string | null;
          "delivered_via": string | null;
          "details": NonNullable<Json>;
          "id": number;
          "kind": string;
          "last_error": string | null;
          "lease_until": string | null;
          "limit_usd": number | null;
          "message": string;
          "net_request_id": number | null;
          "next_attempt_at": string;
          "period_start": string | null;
          "projection_usd": number | null;
          "severity": string;
          "spend_usd": number | null;
          "threshold": number | null;
          "user_id": string | null;
          "alert_payload": Json | null;
        };
        ComputedFields: "alert_payload";
        Insert: {
          "attempts"?: number;
          "budget"?: string | null;
          "budget_id"?: number | null;
          "created_at"?: string;
          "dedup_key": string;
          "delivered_at"?: string | null;
          "delivered_via"?: string | null;
          "details"?: NonNullable<Json>;
          "id"?: never;
          "kind": string;
          "last_error"?: string | null;
          "lease_until"?: string | null;
          "limit_usd"?: number | null;
          "message": string;
          "net_request_id"?: number | null;
          "next_attempt_at"?: string;
          "period_start"?: string | null;
          "projection_usd"?: number | null;
          "severity": string;
          "spend_usd"?: number | null;
          "threshold"?: number | null;
          "user_id"?: string | null;
        };
        Update: {
          "attempts"?: number;
          "budget"?: string | null;
          "budget_id"?: number | null;
          "created_at"?: string;
          "dedup_key"?: string;
          "delivered_at"?: string | null;
          "delivered_via"?: string | null;
          "details"?: NonNullable<Json>;
          "id"?: never;
          "kind"?: string;
          "last_error"?: string | null;
          "lease_until"?: string | null;
          "limit_usd"?: number | null;
          "message"?: string;
          "net_request_id"?: number | null;
          "next_attempt_at"?: string;
          "period_start"?: string | null;
          "projection_usd"?: number | null;
          "severity"?: string;
          "spend_usd"?: number | null;
          "threshold"?: number | null;
          "user_id"?: string | null;
        };
        Relationships: [
          {
            foreignKeyName: "budget_alerts_budget_id_fkey";
            columns: ["budget_id"];
            isOneToOne: false;
            referencedRelation: "budgets";
            referencedColumns: ["id"];
          },
        ];
      };
      "budget_periods": {
        Row: {
          "budget_id": number;
          "leased_usd": number;
          "period_start": string;
          "reserved_total_usd": number;
          "shard": number;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "budget_id": number;
          "leased_usd"?: number;
          "period_start": string;
          "reserved_total_usd"?: number;
          "shard": number;
          "updated_at"?: string;
        };
        Update: {
          "budget_id"?: number;
          "leased_usd"?: number;
          "period_start"?: string;
          "reserved_total_usd"?: number;
          "shard"?: number;
          "updated_at"?: string;
        };
        Relationships: [
          {
            foreignKeyName: "budget_periods_budget_id_fkey";
            columns: ["budget_id"];
            isOneToOne: false;
            referencedRelation: "budgets";
            referencedColumns: ["id"];
          },
        ];
      };
      "budget_settlements": {
        Row: {
          "budget_id": number;
          "calls": number;
          "period_start": string;
          "released_usd": number;
          "shard": number;
          "spent_usd": number;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "budget_id": number;
          "calls"?: number;
          "period_start": string;
          "released_usd"?: number;
          "shard": number;
          "spent_usd"?: number;
          "updated_at"?: string;
        };
        Update: {
          "budget_id"?: number;
          "calls"?: number;
          "period_start"?: string;
          "released_usd"?: number;
          "shard"?: number;
          "spent_usd"?: number;
          "updated_at"?: string;
        };
        Relationships: [
          {
            foreignKeyName: "budget_settlements_budget_id_fkey";
            columns: ["budget_id"];
            isOneToOne: false;
            referencedRelation: "budgets";
            referencedColumns: ["id"];
          },
        ];
      };
      "budgets": {
        Row: {
          "created_at": string;
          "exempt_critical": boolean;
          "feature": string | null;
          "hard_cap": boolean;
          "id": number;
          "monthly_limit_usd": number;
          "note": string | null;
          "scope": string;
          "thresholds": (number)[];
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "created_at"?: string;
          "exempt_critical"?: boolean;
          "feature"?: string | null;
          "hard_cap"?: boolean;
          "id"?: never;
          "monthly_limit_usd": number;
          "note"?: string | null;
          "scope": string;
          "thresholds"?: (number)[];
          "updated_at"?: string;
        };
        Update: {
          "created_at"?: string;
          "exempt_critical"?: boolean;
          "feature"?: string | null;
          "hard_cap"?: boolean;
          "id"?: never;
          "monthly_limit_usd"?: number;
          "note"?: string | null;
          "scope"?: string;
          "thresholds"?: (number)[];
          "updated_at"?: string;
        };
        Relationships: [
          {
            foreignKeyName: "budgets_feature_fkey";
            columns: ["feature"];
            isOneToOne: false;
            referencedRelation: "features";
            referencedColumns: ["name"];
          },
        ];
      };
      "features": {
        Row: {
          "allowed_models": (string)[] | null;
          "cache_ttl_seconds": number;
          "created_at": string;
          "description": string;
          "max_tokens": number;
          "name": string;
          "paused": boolean;
          "paused_reason": string | null;
          "paused_since": string | null;
          "priority": string;
          "restricted_max_tokens": number;
          "stale_cache_seconds": number;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "allowed_models"?: (string)[] | null;
          "cache_ttl_seconds"?: number;
          "created_at"?: string;
          "description"?: string;
          "max_tokens"?: number;
          "name": string;
          "paused"?: boolean;
          "paused_reason"?: string | null;
          "paused_since"?: string | null;
          "priority"?: string;
          "restricted_max_tokens"?: number;
          "stale_cache_seconds"?: number;
          "updated_at"?: string;
        };
        Update: {
          "allowed_models"?: (string)[] | null;
          "cache_ttl_seconds"?: number;
          "created_at"?: string;
          "description"?: string;
          "max_tokens"?: number;
          "name"?: string;
          "paused"?: boolean;
          "paused_reason"?: string | null;
          "paused_since"?: string | null;
          "priority"?: string;
          "restricted_max_tokens"?: number;
          "stale_cache_seconds"?: number;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "gateway_state": {
        Row: {
          "anomaly_paused": boolean;
          "anomaly_paused_by": string | null;
          "anomaly_paused_since": string | null;
          "anomaly_reason": string | null;
          "anomaly_snoozed_until": string | null;
          "id": boolean;
          "throttle_reason": string | null;
          "throttled": boolean;
          "throttled_by": string | null;
          "throttled_since": string | null;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "anomaly_paused"?: boolean;
          "anomaly_paused_by"?: string | null;
          "anomaly_paused_since"?: string | null;
          "anomaly_reason"?: string | null;
          "anomaly_snoozed_until"?: string | null;
          "id"?: boolean;
          "throttle_reason"?: string | null;
          "throttled"?: boolean;
          "throttled_by"?: string | null;
          "throttled_since"?: string | null;
          "updated_at"?: string;
        };
        Update: {
          "anomaly_paused"?: boolean;
          "anomaly_paused_by"?: string | null;
          "anomaly_paused_since"?: string | null;
          "anomaly_reason"?: string | null;
          "anomaly_snoozed_until"?: string | null;
          "id"?: boolean;
          "throttle_reason"?: string | null;
          "throttled"?: boolean;
          "throttled_by"?: string | null;
          "throttled_since"?: string | null;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "guard_settings": {
        Row: {
          "anomaly_factor": number;
          "anomaly_min_usd_per_hour": number;
          "anomaly_window_minutes": number;
          "id": boolean;
          "throttle_percent": number | null;
          "updated_at": string;
          "user_anomaly_factor": number;
          "user_anomaly_min_calls_per_day": number;
          "webhook_url": string | null;
        };
        ComputedFields: never;
        Insert: {
          "anomaly_factor"?: number;
          "anomaly_min_usd_per_hour"?: number;
          "anomaly_window_minutes"?: number;
          "id"?: boolean;
          "throttle_percent"?: number | null;
          "updated_at"?: string;
          "user_anomaly_factor"?: number;
          "user_anomaly_min_calls_per_day"?: number;
          "webhook_url"?: string | null;
        };
        Update: {
          "anomaly_factor"?: number;
          "anomaly_min_usd_per_hour"?: number;
          "anomaly_window_minutes"?: number;
          "id"?: boolean;
          "throttle_percent"?: number | null;
          "updated_at"?: string;
          "user_anomaly_factor"?: number;
          "user_anomaly_min_calls_per_day"?: number;
          "webhook_url"?: string | null;
        };
        Relationships: [];
      };
      "model_prices": {
        Row: {
          "cache_write_per_mtok": number | null;
          "cached_input_per_mtok": number | null;
          "input_per_mtok": number;
          "model": string;
          "note": string | null;
          "output_per_mtok": number;
          "provider": string;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "cache_write_per_mtok"?: number | null;
          "cached_input_per_mtok"?: number | null;
          "input_per_mtok": number;
          "model": string;
          "note"?: string | null;
          "output_per_mtok": number;
          "provider": string;
          "updated_at"?: string;
        };
        Update: {
          "cache_write_per_mtok"?: number | null;
          "cached_input_per_mtok"?: number | null;
          "input_per_mtok"?: number;
          "model"?: string;
          "note"?: string | null;
          "output_per_mtok"?: number;
          "provider"?: string;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "priority_classes": {
        Row: {
          "max_wait_seconds": number;
          "priority": string;
          "rank": number;
          "shed_queue_depth": number | null;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "max_wait_seconds": number;
          "priority": string;
          "rank": number;
          "shed_queue_depth"?: number | null;
          "updated_at"?: string;
        };
        Update: {
          "max_wait_seconds"?: number;
          "priority"?: string;
          "rank"?: number;
          "shed_queue_depth"?: number | null;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "provider_health": {
        Row: {
          "consecutive_429s": number;
          "consecutive_failures": number;
          "cooldown_seconds": number;
          "failure_threshold": number;
          "last_failure_at": string | null;
          "last_status": number | null;
          "last_success_at": string | null;
          "model": string;
          "opened_at": string | null;
          "probe_request_id": string | null;
          "probe_started_at": string | null;
          "provider": string;
          "state": string;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "consecutive_429s"?: number;
          "consecutive_failures"?: number;
          "cooldown_seconds"?: number;
          "failure_threshold"?: number;
          "last_failure_at"?: string | null;
          "last_status"?: number | null;
          "last_success_at"?: string | null;
          "model": string;
          "opened_at"?: string | null;
          "probe_request_id"?: string | null;
          "probe_started_at"?: string | null;
          "provider": string;
          "state"?: string;
          "updated_at"?: string;
        };
        Update: {
          "consecutive_429s"?: number;
          "consecutive_failures"?: number;
          "cooldown_seconds"?: number;
          "failure_threshold"?: number;
          "last_failure_at"?: string | null;
          "last_status"?: number | null;
          "last_success_at"?: string | null;
          "model"?: string;
          "opened_at"?: string | null;
          "probe_request_id"?: string | null;
          "probe_started_at"?: string | null;
          "provider"?: string;
          "state"?: string;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "provider_key_usage_daily": {
        Row: {
          "calls": number;
          "cost_usd": number;
          "day": string;
          "input_tokens": number;
          "label": string;
          "output_tokens": number;
          "provider": string;
          "shard": number;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "calls"?: number;
          "cost_usd"?: number;
          "day": string;
          "input_tokens"?: number;
          "label": string;
          "output_tokens"?: number;
          "provider": string;
          "shard": number;
          "updated_at"?: string;
        };
        Update: {
          "calls"?: number;
          "cost_usd"?: number;
          "day"?: string;
          "input_tokens"?: number;
          "label"?: string;
          "output_tokens"?: number;
          "provider"?: string;
          "shard"?: number;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "provider_keys": {
        Row: {
          "daily_budget_usd": number | null;
          "dead_since": string | null;
          "dead_status": number | null;
          "expires_on": string | null;
          "fingerprint": string;
          "label": string;
          "max_in_flight": number | null;
          "minute_requests": number;
          "minute_start": string | null;
          "minute_tokens": number;
          "note": string | null;
          "observed_at": string | null;
          "position": number;
          "previous_minute_requests": number;
          "previous_minute_tokens": number;
          "provider": string;
          "registered_at": string;
          "remaining_requests": number | null;
          "remaining_tokens": number | null;
          "requests_per_minute": number | null;
          "requests_reset_at": string | null;
          "requests_since_observed": number;
          "state": string;
          "tokens_per_minute": number | null;
          "tokens_reset_at": string | null;
          "tokens_since_observed": number;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "daily_budget_usd"?: number | null;
          "dead_since"?: string | null;
          "dead_status"?: number | null;
          "expires_on"?: string | null;
          "fingerprint": string;
          "label": string;
          "max_in_flight"?: number | null;
          "minute_requests"?: number;
          "minute_start"?: string | null;
          "minute_tokens"?: number;
          "note"?: string | null;
          "observed_at"?: string | null;
          "position"?: number;
          "previous_minute_requests"?: number;
          "previous_minute_tokens"?: number;
          "provider": string;
          "registered_at"?: string;
          "remaining_requests"?: number | null;
          "remaining_tokens"?: number | null;
          "requests_per_minute"?: number | null;
          "requests_reset_at"?: string | null;
          "requests_since_observed"?: number;
          "state"?: string;
          "tokens_per_minute"?: number | null;
          "tokens_reset_at"?: string | null;
          "tokens_since_observed"?: number;
          "updated_at"?: string;
        };
        Update: {
          "daily_budget_usd"?: number | null;
          "dead_since"?: string | null;
          "dead_status"?: number | null;
          "expires_on"?: string | null;
          "fingerprint"?: string;
          "label"?: string;
          "max_in_flight"?: number | null;
          "minute_requests"?: number;
          "minute_start"?: string | null;
          "minute_tokens"?: number;
          "note"?: string | null;
          "observed_at"?: string | null;
          "position"?: number;
          "previous_minute_requests"?: number;
          "previous_minute_tokens"?: number;
          "provider"?: string;
          "registered_at"?: string;
          "remaining_requests"?: number | null;
          "remaining_tokens"?: number | null;
          "requests_per_minute"?: number | null;
          "requests_reset_at"?: string | null;
          "requests_since_observed"?: number;
          "state"?: string;
          "tokens_per_minute"?: number | null;
          "tokens_reset_at"?: string | null;
          "tokens_since_observed"?: number;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "rejections": {
        Row: {
          "code": string;
          "created_at": string;
          "feature": string | null;
          "id": number;
          "layer": string;
          "model": string | null;
          "request_id": string | null;
          "tier": string | null;
          "user_id": string | null;
        };
        ComputedFields: never;
        Insert: {
          "code": string;
          "created_at"?: string;
          "feature"?: string | null;
          "id"?: never;
          "layer": string;
          "model"?: string | null;
          "request_id"?: string | null;
          "tier"?: string | null;
          "user_id"?: string | null;
        };
        Update: {
          "code"?: string;
          "created_at"?: string;
          "feature"?: string | null;
          "id"?: never;
          "layer"?: string;
          "model"?: string | null;
          "request_id"?: string | null;
          "tier"?: string | null;
          "user_id"?: string | null;
        };
        Relationships: [];
      };
      "response_cache": {
        Row: {
          "cache_key": string;
          "cost_usd": number;
          "created_at": string;
          "expires_at": string;
          "feature": string;
          "model": string;
          "provider": string;
          "response": NonNullable<Json>;
          "stale_until": string | null;
        };
        ComputedFields: never;
        Insert: {
          "cache_key": string;
          "cost_usd"?: number;
          "created_at"?: string;
          "expires_at": string;
          "feature": string;
          "model": string;
          "provider": string;
          "response": NonNullable<Json>;
          "stale_until"?: string | null;
        };
        Update: {
          "cache_key"?: string;
          "cost_usd"?: number;
          "created_at"?: string;
          "expires_at"?: string;
          "feature"?: string;
          "model"?: string;
          "provider"?: string;
          "response"?: NonNullable<Json>;
          "stale_until"?: string | null;
        };
        Relationships: [];
      };
      "route_targets": {
        Row: {
          "model": string;
          "position": number;
          "provider": string;
          "route_model": string;
        };
        ComputedFields: never;
        Insert: {
          "model": string;
          "position": number;
          "provider": string;
          "route_model": string;
        };
        Update: {
          "model"?: string;
          "position"?: number;
          "provider"?: string;
          "route_model"?: string;
        };
        Relationships: [
          {
            foreignKeyName: "route_targets_route_model_fkey";
            columns: ["route_model"];
            isOneToOne: false;
            referencedRelation: "routes";
            referencedColumns: ["model"];
          },
        ];
      };
      "routes": {
        Row: {
          "cheaper_model": string | null;
          "description": string;
          "model": string;
        };
        ComputedFields: never;
        Insert: {
          "cheaper_model"?: string | null;
          "description"?: string;
          "model": string;
        };
        Update: {
          "cheaper_model"?: string | null;
          "description"?: string;
          "model"?: string;
        };
        Relationships: [];
      };
      "spend_hourly": {
        Row: {
          "calls": number;
          "computed_at": string;
          "cost_usd": number;
          "hour": string;
        };
        ComputedFields: never;
        Insert: {
          "calls"?: number;
          "computed_at"?: string;
          "cost_usd"?: number;
          "hour": string;
        };
        Update: {
          "calls"?: number;
          "computed_at"?: string;
          "cost_usd"?: number;
          "hour"?: string;
        };
        Relationships: [];
      };
      "tier_windows": {
        Row: {
          "max_requests": number;
          "name": string;
          "tier": string;
          "window_seconds": number;
        };
        ComputedFields: never;
        Insert: {
          "max_requests": number;
          "name": string;
          "tier": string;
          "window_seconds": number;
        };
        Update: {
          "max_requests"?: number;
          "name"?: string;
          "tier"?: string;
          "window_seconds"?: number;
        };
        Relationships: [
          {
            foreignKeyName: "tier_windows_tier_fkey";
            columns: ["tier"];
            isOneToOne: false;
            referencedRelation: "tiers";
            referencedColumns: ["name"];
          },
        ];
      };
      "tiers": {
        Row: {
          "created_at": string;
          "daily_token_quota": number | null;
          "description": string;
          "max_output_tokens": number;
          "monthly_cost_cap_usd": number | null;
          "monthly_token_quota": number | null;
          "name": string;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "created_at"?: string;
          "daily_token_quota"?: number | null;
          "description"?: string;
          "max_output_tokens"?: number;
          "monthly_cost_cap_usd"?: number | null;
          "monthly_token_quota"?: number | null;
          "name": string;
          "updated_at"?: string;
        };
        Update: {
          "created_at"?: string;
          "daily_token_quota"?: number | null;
          "description"?: string;
          "max_output_tokens"?: number;
          "monthly_cost_cap_usd"?: number | null;
          "monthly_token_quota"?: number | null;
          "name"?: string;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "upstream_queue": {
        Row: {
          "enqueued_at": string;
          "last_seen_at": string;
          "priority": string;
          "provider": string;
          "rank": number;
          "request_id": string;
          "user_id": string;
          "wait_until": string;
        };
        ComputedFields: never;
        Insert: {
          "enqueued_at": string;
          "last_seen_at": string;
          "priority": string;
          "provider": string;
          "rank": number;
          "request_id": string;
          "user_id": string;
          "wait_until": string;
        };
        Update: {
          "enqueued_at"?: string;
          "last_seen_at"?: string;
          "priority"?: string;
          "provider"?: string;
          "rank"?: number;
          "request_id"?: string;
          "user_id"?: string;
          "wait_until"?: string;
        };
        Relationships: [];
      };
      "upstream_settings": {
        Row: {
          "id": boolean;
          "key_expiry_warning_days": number;
          "low_headroom_percent": number;
          "queue_aging_seconds": number;
          "queue_poll_ms": number;
          "queue_ticket_ttl_seconds": number;
          "rate_limit_streak": number;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "id"?: boolean;
          "key_expiry_warning_days"?: number;
          "low_headroom_percent"?: number;
          "queue_aging_seconds"?: number;
          "queue_poll_ms"?: number;
          "queue_ticket_ttl_seconds"?: number;
          "rate_limit_streak"?: number;
          "updated_at"?: string;
        };
        Update: {
          "id"?: boolean;
          "key_expiry_warning_days"?: number;
          "low_headroom_percent"?: number;
          "queue_aging_seconds"?: number;
          "queue_poll_ms"?: number;
          "queue_ticket_ttl_seconds"?: number;
          "rate_limit_streak"?: number;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "usage_daily": {
        Row: {
          "cache_hits": number;
          "cache_write_tokens": number;
          "cached_input_tokens": number;
          "calls": number;
          "client_closed_calls": number;
          "cost_usd": number;
          "day": string;
          "error_calls": number;
          "expired_calls": number;
          "fallback_calls": number;
          "feature": string;
          "input_tokens": number;
          "latency_ms_sum": number;
          "model": string;
          "output_tokens": number;
          "provider": string;
          "reasoning_tokens": number;
          "saved_cost_usd": number;
          "shard": number;
          "success_calls": number;
          "timeout_calls": number;
          "unpriced_calls": number;
          "updated_at": string;
        };
        ComputedFields: never;
        Insert: {
          "cache_hits"?: number;
          "cache_write_tokens"?: number;
          "cached_input_tokens"?: number;
          "calls"?: number;
          "client_closed_calls"?: number;
          "cost_usd"?: number;
          "day": string;
          "error_calls"?: number;
          "expired_calls"?: number;
          "fallback_calls"?: number;
          "feature": string;
          "input_tokens"?: number;
          "latency_ms_sum"?: number;
          "model": string;
          "output_tokens"?: number;
          "provider": string;
          "reasoning_tokens"?: number;
          "saved_cost_usd"?: number;
          "shard"?: number;
          "success_calls"?: number;
          "timeout_calls"?: number;
          "unpriced_calls"?: number;
          "updated_at"?: string;
        };
        Update: {
          "cache_hits"?: number;
          "cache_write_tokens"?: number;
          "cached_input_tokens"?: number;
          "calls"?: number;
          "client_closed_calls"?: number;
          "cost_usd"?: number;
          "day"?: string;
          "error_calls"?: number;
          "expired_calls"?: number;
          "fallback_calls"?: number;
          "feature"?: string;
          "input_tokens"?: number;
          "latency_ms_sum"?: number;
          "model"?: string;
          "output_tokens"?: number;
          "provider"?: string;
          "reasoning_tokens"?: number;
          "saved_cost_usd"?: number;
          "shard"?: number;
          "success_calls"?: number;
          "timeout_calls"?: number;
          "unpriced_calls"?: number;
          "updated_at"?: string;
        };
        Relationships: [];
      };
      "user_flags": {
        Row: {
          "baseline_calls_per_day": number | null;
          "calls_last_hour": number | null;
          "cleared_at": string | null;
          "flagged": boolean;
          "flagged_since": string | null;
          "reason": string | null;
          "snoozed_until": string | null;
          "updated_at": string;
          "user_id": string;
        };
        ComputedFields: never;
        Insert: {
          "baseline_calls_per_day"?: number | null;
          "calls_last_hour"?: number | null;
          "cleared_at"?: string | null;
          "flagged"?: boolean;
          "flagged_since"?: string | null;
          "reason"?: string | null;
          "snoozed_until"?: string | null;
          "updated_at"?: string;
          "user_id": string;
        };
        Update: {
          "baseline_calls_per_day"?: number | null;
          "calls_last_hour"?: number | null;
          "cleared_at"?: string | null;
          "flagged"?: boolean;
          "flagged_since"?: string | null;
          "reason"?: string | null;
          "snoozed_until"?: string | null;
          "updated_at"?: string;
          "user_id"?: string;
        };
        Relationships: [];
      };
      "user_plans": {
        Row: {
          "created_at": string;
          "daily_token_quota": number | null;
          "monthly_cost_cap_usd": number | null;
          "monthly_token_quota": number | null;
          "note": string | null;
          "tier": string;
          "updated_at": string;
          "user_id": string;
        };
        ComputedFields: never;
        Insert: {
          "created_at"?: string;
          "daily_token_quota"?: number | null;
          "monthly_cost_cap_usd"?: number | null;
          "monthly_token_quota"?: number | null;
          "note"?: string | null;
          "tier": string;
          "updated_at"?: string;
          "user_id": string;
        };
        Update: {
          "created_at"?: string;
          "daily_token_quota"?: number | null;
          "monthly_cost_cap_usd"?: number | null;
          "monthly_token_quota"?: number | null;
          "note"?: string | null;
          "tier"?: string;
          "updated_at"?: string;
          "user_id"?: string;
        };
        Relationships: [
          {
            foreignKeyName: "user_plans_tier_fkey";
            columns: ["tier"];
            isOneToOne: false;
            referencedRelation: "tiers";
            referencedColumns: ["name"];
          },
        ];
      };
    };
    Views: {
      [_ in never]: never;
    };
    Functions: {
      "abandon": { Args: { "request_id": string; "user_id": string }; Returns: string };
      "add_to_usage_daily": {
        Args: { "additions": (Database["tollgate"]["Tables"]["usage_daily"]["Row"])[] };
        Returns: number;
      };
      "add_to_user_usage_daily": {
        Args: { "additions": (Database["public"]["Tables"]["user_usage_daily"]["Row"])[] };
        Returns: undefined;
      };
      "admit": { Args: { "request": Json }; Returns: Json };
      "admit_many": { Args: { "requests": Json }; Returns: Json };
      "admit_one": {
        Args: {
          "budgets": (Database["tollgate"]["CompositeTypes"]["budget_read"])[];
          "request": Json;
          "routes": (Database["tollgate"]["CompositeTypes"]["route_read"])[];
          "user_locked": boolean;
        };
        Returns: Record<string, unknown>;
      };
      "alert_payload": {
        Args: {
          "alert": Omit<
            Database["tollgate"]["Tables"]["budget_alerts"]["Row"],
            Database["tollgate"]["Tables"]["budget_alerts"]["ComputedFields"]
          >;
        };
        Returns: Json;
      };
      "alert_retry_delay": { Args: { "attempts": number }; Returns: string };
      "apply_usage_deltas": {
        Args: { "deltas": (Database["tollgate"]["CompositeTypes"]["usage_delta"])[] };
        Returns: undefined;
      };
      "check_anomalies": { Args: { "as_of"?: string }; Returns: Json };
      "check_budgets": { Args: { "as_of"?: string }; Returns: Json };
      "check_provider_keys": { Args: { "as_of"?: string }; Returns: number };
      "claim_alerts": {
        Args: { "lease_seconds"?: number; "max_alerts"?: number };
        Returns: {
          "alert_id": number;
          "payload": Json;
        }[];
      };
      "clear_anomaly": { Args: { "snooze"?: string }; Returns: boolean };
      "clear_user_flag": { Args: { "snooze"?: string; "user_id": string }; Returns: boolean };
      "database_delivers_alerts": { Args: Record<PropertyKey, never>; Returns: boolean };
      "deliver_alerts": { Args: { "max_alerts"?: number }; Returns: Json };
      "expire_reservations": { Args: { "batch_size"?: number; "max_age"?: string }; Returns: number };
      "key_headroom": {
        Args: {
          "at": string;
          "estimated_tokens": number;
          "in_flight": number;
          "k": Omit<
            Database["tollgate"]["Tables"]["provider_keys"]["Row"],
            Database["tollgate"]["Tables"]["provider_keys"]["ComputedFields"]
          >;
        };
        Returns: number;
      };
      "key_in_flight": { Args: { "label": string; "provider": string }; Returns: number };
      "key_usable": {
        Args: {
          "at": string;
          "k": Omit<
            Database["tollgate"]["Tables"]["provider_keys"]["Row"],
            Database["tollgate"]["Tables"]["provider_keys"]["ComputedFields"]
          >;
        };
        Returns: boolean;
      };
      "lease_budget": {
        Args: { "at": string; "budget_id": number; "estimate": number; "period_start": string; "shard": number };
        Returns: boolean;
      };
      "leave_queue": { Args: { "request_id": string }; Returns: boolean };
      "lock_budget": { Args: { "budget_id": number }; Returns: undefined };
      "lock_users": { Args: { "user_ids": (string)[] }; Returns: undefined };
      "max_batch_size": { Args: Record<PropertyKey, never>; Returns: number };
      "models_for": { Args: { "feature": string }; Returns: (string)[] };
      "next_month_start": { Args: { "at": string }; Returns: string };
      "provider_room": {
        Args: { "at": string; "estimated_tokens": number; "provider": string };
        Returns: Record<string, unknown>;
      };
      "prune_api_usage": { Args: { "max_rows"?: number }; Returns: Json };
      "quota_warning": { Args: { "kind": string; "message": string; "quota": number; "used": number }; Returns: Json };
      "record_alert_delivery": { Args: { "alert_id": number; "error_message"?: string }; Returns: boolean };
      "record_attempts": { Args: { "at": string; "attempts": Json }; Returns: undefined };
      "record_calls": { Args: { "calls": Json }; Returns: Record<string, unknown> };
      "record_late_call": {
        Args: { "at": string; "call": Database["tollgate"]["CompositeTypes"]["settle_call"]; "provider_key": string };
        Returns: Record<string, unknown>;
      };
      "record_upstream": { Args: { "at": string; "attempts": Json }; Returns: undefined };
      "register_provider_keys": { Args: { "keys": Json }; Returns: number };
      "revive_provider_key": { Args: { "label": string; "provider": string }; Returns: boolean };
      "settle": { Args: { "call": Json }; Returns: Json };
      "settle_call_problem": { Args: { "call": Json }; Returns: string };
      "settle_many": { Args: { "calls": Json }; Returns: undefined };
      "stale_answer": { Args: { "cache_key": string; "feature": string }; Returns: Json };
      "upstream_admission": {
        Args: {
          "at": string;
          "estimated_tokens": number;
          "priority": string;
          "provider": string;
          "request_id": string;
          "user_id": string;
        };
        Returns: Json;
      };
      "usage": { Args: { "is_anonymous"?: boolean; "user_id": string }; Returns: Json };
      "usage_delta_of": {
        Args: {
          "budget_ids": (number)[];
          "c": Omit<
            Database["public"]["Tables"]["ai_api_calls"]["Row"],
            Database["public"]["Tables"]["ai_api_calls"]["ComputedFields"]
          >;
          "released_cost_usd": number;
          "released_tokens": number;
          "sign": number;
        };
        Returns: Database["tollgate"]["CompositeTypes"]["usage_delta"];
        SetofOptions: {
          from: "*";
          to: "usage_delta";
          isOneToOne: true;
          isSetofReturn: false;
        };
      };
      "usd": { Args: { "amount": number }; Returns: string };
    };
    Enums: {
      [_ in never]: never;
    };
    CompositeTypes: {
      "admit_request": {
        "request_id": string | null;
        "user_id": string | null;
        "is_anonymous": boolean | null;
        "feature": string | null;
        "model": string | null;
        "estimated_input_tokens": number | null;
        "max_output_tokens": number | null;
        "estimated_cost_usd": number | null;
        "dry_run": boolean | null;
        "cache_key": string | null;
        "cache_ttl_seconds": number | null;
      };
      "budget_read": {
        "feature": string | null;
        "period_start": string | null;
        "ids": (number)[] | null;
        "limits": (number)[] | null;
        "capped": (boolean)[] | null;
        "reserved": (number)[] | null;
        "settled": (number)[] | null;
      };
      "route_read": {
        "model": string | null;
        "providers": (string)[] | null;
        "models": (string)[] | null;
        "states": (string)[] | null;
        "probe_due": (boolean)[] | null;
        "keys": (string)[] | null;
        "exhausted": (boolean)[] | null;
        "guarded": (boolean)[] | null;
        "prices": Json | null;
        "input_per_mtok": number | null;
        "output_per_mtok": number | null;
      };
      "settle_call": {
        "request_id": string | null;
        "user_id": string | null;
        "feature": string | null;
        "provider": string | null;
        "model": string | null;
        "status": string | null;
        "input_tokens": number | null;
        "output_tokens": number | null;
        "cached_input_tokens": number | null;
        "cache_write_tokens": number | null;
        "reasoning_tokens": number | null;
        "latency_ms": number | null;
        "cost_usd": number | null;
        "saved_cost_usd": number | null;
        "priced": boolean | null;
        "cached": boolean | null;
        "streamed": boolean | null;
        "attempts": number | null;
        "fallback_from": string | null;
        "error_code": string | null;
        "endpoint": string | null;
        "attempts_detail": Json | null;
        "cache_entry": Json | null;
      };
      "usage_delta": {
        "user_id": string | null;
        "day": string | null;
        "provider": string | null;
        "model": string | null;
        "feature": string | null;
        "budget_ids": (number)[] | null;
        "calls": number | null;
        "input_tokens": number | null;
        "output_tokens": number | null;
        "cached_input_tokens": number | null;
        "cache_write_tokens": number | null;
        "reasoning_tokens": number | null;
        "cost_usd": number | null;
        "saved_cost_usd": number | null;
        "latency_ms": number | null;
        "cache_hits": number | null;
        "success_calls": number | null;
        "error_calls": number | null;
        "timeout_calls": number | null;
        "client_closed_calls": number | null;
        "expired_calls": number | null;
        "fallback_calls": number | null;
        "unpriced_calls": number | null;
        "released_tokens": number | null;
        "released_cost_usd": number | null;
      };
    };
  };
};

type DatabaseWithoutInternals = Omit<Database, "__InternalSupabase">;

type DefaultSchema = DatabaseWithoutInternals[Extract<keyof Database, "public">];

export type Tables<
  DefaultSchemaTableNameOrOptions extends
    | keyof (DefaultSchema["Tables"] & DefaultSchema["Views"])
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals;
  } ? keyof (
      & DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
      & DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"]
    )
    : never = never,
> = DefaultSchemaTableNameOrOptions extends { schema: keyof DatabaseWithoutInternals } ? (
    & DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    & DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"]
  )[TableName] extends {
    Row: infer R;
  } ? R
  : never
  : DefaultSchemaTableNameOrOptions extends keyof (DefaultSchema["Tables"] & DefaultSchema["Views"])
    ? (DefaultSchema["Tables"] & DefaultSchema["Views"])[DefaultSchemaTableNameOrOptions] extends {
      Row: infer R;
    } ? R
    : never
  : never;

export type TablesInsert<
  DefaultSchemaTableNameOrOptions extends
    | keyof DefaultSchema["Tables"]
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals;
  } ? keyof DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    : never = never,
> = DefaultSchemaTableNameOrOptions extends { schema: keyof DatabaseWithoutInternals }
  ? DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"][TableName] extends {
    Insert: infer I;
  } ? I
  : never
  : DefaultSchemaTableNameOrOptions extends keyof DefaultSchema["Tables"]
    ? DefaultSchema["Tables"][DefaultSchemaTableNameOrOptions] extends {
      Insert: infer I;
    } ? I
    : never
  : never;

export type TablesUpdate<
  DefaultSchemaTableNameOrOptions extends
    | keyof DefaultSchema["Tables"]
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals;
  } ? keyof DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    : never = never,
> = DefaultSchemaTableNameOrOptions extends { schema: keyof DatabaseWithoutInternals }
  ? DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"][TableName] extends {
    Update: infer U;
  } ? U
  : never
  : DefaultSchemaTableNameOrOptions extends keyof DefaultSchema["Tables"]
    ? DefaultSchema["Tables"][DefaultSchemaTableNameOrOptions] extends {
      Update: infer U;
    } ? U
    : never
  : never;

export type Enums<
  DefaultSchemaEnumNameOrOptions extends
    | keyof DefaultSchema["Enums"]
    | { schema: keyof DatabaseWithoutInternals },
  EnumName extends DefaultSchemaEnumNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals;
  } ? keyof DatabaseWithoutInternals[DefaultSchemaEnumNameOrOptions["schema"]]["Enums"]
    : never = never,
> = DefaultSchemaEnumNameOrOptions extends { schema: keyof DatabaseWithoutInternals }
  ? DatabaseWithoutInternals[DefaultSchemaEnumNameOrOptions["schema"]]["Enums"][EnumName]
  : DefaultSchemaEnumNameOrOptions extends keyof DefaultSchema["Enums"]
    ? DefaultSchema["Enums"][DefaultSchemaEnumNameOrOptions]
  : never;

export type CompositeTypes<
  PublicCompositeTypeNameOrOptions extends
    | keyof DefaultSchema["CompositeTypes"]
    | { schema: keyof DatabaseWithoutInternals },
  CompositeTypeName extends PublicCompositeTypeNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals;
  } ? keyof DatabaseWithoutInternals[PublicCompositeTypeNameOrOptions["schema"]]["CompositeTypes"]
    : never = never,
> = PublicCompositeTypeNameOrOptions extends { schema: keyof DatabaseWithoutInternals }
  ? DatabaseWithoutInternals[PublicCompositeTypeNameOrOptions["schema"]]["CompositeTypes"][CompositeTypeName]
  : PublicCompositeTypeNameOrOptions extends keyof DefaultSchema["CompositeTypes"]
    ? DefaultSchema["CompositeTypes"][PublicCompositeTypeNameOrOptions]
  : never;

export const Constants = {
  "public": {
    Enums: {},
  },
  "tollgate": {
    Enums: {},
  },
} as const;
