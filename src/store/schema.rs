// @generated-style schema shared by the SQLite and PostgreSQL backends.
// Keep in step with migrations/sqlite and migrations/postgres.

diesel::table! {
    servers (id) {
        id -> Text,
        name -> Text,
        hostname -> Text,
        port -> Integer,
        username -> Text,
        auth_type -> Text,
        password -> Nullable<Binary>,
        private_key -> Nullable<Binary>,
        private_key_passphrase -> Nullable<Binary>,
        secret_version -> Integer,
        host_key -> Nullable<Text>,
        host_key_check -> Text,
        max_concurrent_jobs -> Integer,
        is_active -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
        labels -> Text,
    }
}

diesel::table! {
    jobs (id) {
        id -> Text,
        kind -> Text,
        command -> Nullable<Text>,
        args -> Nullable<Text>,
        script -> Nullable<Text>,
        shell -> Nullable<Text>,
        server_id -> Text,
        timeout_secs -> BigInt,
        env -> Text,
        cwd -> Nullable<Text>,
        idempotency_key -> Nullable<Text>,
        retry_safe -> Bool,
        status -> Text,
        exit_code -> Nullable<Integer>,
        error -> Nullable<Text>,
        created_at -> BigInt,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        duplicated_from -> Nullable<Text>,
        worker -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
        attempts -> Integer,
        cancel_requested -> Bool,
        published -> Bool,
        remote_pgid -> Nullable<BigInt>,
        output_bytes -> BigInt,
        output_truncated -> Bool,
        next_seq -> BigInt,
        run_id -> Nullable<Text>,
        sealed_env -> Nullable<Binary>,
        output_pruned_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    job_output (job_id, seq) {
        job_id -> Text,
        seq -> BigInt,
        stream -> SmallInt,
        data -> Binary,
        at -> BigInt,
        byte_offset -> BigInt,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Text,
        at -> BigInt,
        actor -> Text,
        peer -> Nullable<Text>,
        action -> Text,
        target_kind -> Text,
        target_id -> Nullable<Text>,
        detail -> Text,
    }
}

diesel::table! {
    runs (id) {
        id -> Text,
        spec -> Text,
        targets -> Text,
        batch -> Nullable<Text>,
        canary -> Integer,
        max_failures -> Text,
        keep_going -> Bool,
        status -> Text,
        cancel_requested -> Bool,
        rerun_of -> Nullable<Text>,
        actor -> Text,
        created_at -> BigInt,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        template_id -> Nullable<Text>,
        parameters -> Nullable<Text>,
        sealed_env -> Nullable<Binary>,
    }
}

diesel::table! {
    templates (id) {
        id -> Text,
        name -> Text,
        description -> Nullable<Text>,
        spec -> Text,
        targets -> Text,
        strategy -> Text,
        parameters -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    schedules (id) {
        id -> Text,
        name -> Text,
        template_id -> Text,
        parameters -> Text,
        sealed_params -> Nullable<Binary>,
        cron -> Text,
        timezone -> Text,
        overlap -> Text,
        catch_up_secs -> BigInt,
        paused -> Bool,
        cursor_at -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        scope -> Nullable<Text>,
    }
}

diesel::table! {
    schedule_fires (schedule_id, fire_at) {
        schedule_id -> Text,
        fire_at -> BigInt,
        status -> Text,
        run_id -> Nullable<Text>,
        detail -> Nullable<Text>,
        claimed_by -> Text,
        claimed_at -> BigInt,
    }
}

diesel::table! {
    run_hosts (run_id, position) {
        run_id -> Text,
        position -> Integer,
        server_id -> Text,
        server_name -> Text,
        state -> Text,
        job_id -> Nullable<Text>,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Text,
        name -> Text,
        url -> Text,
        events -> Text,
        selector -> Nullable<Text>,
        template_id -> Nullable<Text>,
        sealed_secret -> Nullable<Binary>,
        active -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Text,
        webhook_id -> Text,
        event -> Text,
        subject_id -> Text,
        at -> BigInt,
        body -> Nullable<Text>,
        status -> Text,
        attempts -> Integer,
        last_status_code -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        next_attempt_at -> BigInt,
        claimed_until -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::table! {
    dashboard_sessions (id_hash) {
        id_hash -> Text,
        token_hash -> Text,
        name -> Text,
        created_at -> BigInt,
        seen_at -> BigInt,
    }
}

diesel::table! {
    retention_lease (name) {
        name -> Text,
        holder -> Text,
        held_until -> BigInt,
    }
}

diesel::joinable!(job_output -> jobs (job_id));
diesel::joinable!(run_hosts -> runs (run_id));
diesel::allow_tables_to_appear_in_same_query!(
    servers,
    jobs,
    job_output,
    audit_log,
    runs,
    run_hosts,
    templates,
    schedules,
    schedule_fires,
    webhooks,
    webhook_deliveries,
    dashboard_sessions,
    retention_lease
);
