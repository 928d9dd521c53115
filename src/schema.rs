// @generated automatically by Diesel CLI.

diesel::table! {
    email_outbox (id) {
        id -> Int8,
        license_id -> Int8,
        kind -> Text,
        recipient -> Nullable<Text>,
        status -> Text,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        next_attempt_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        message_id -> Text,
        created_at -> Timestamptz,
        claimed_by -> Nullable<Int4>,
        stripe_account -> Nullable<Text>,
    }
}

diesel::table! {
    license_ledger (id) {
        id -> Int8,
        license_id -> Int8,
        run_id -> Nullable<Int8>,
        action -> Text,
        before -> Nullable<Jsonb>,
        after -> Jsonb,
        stripe_object -> Text,
        created_at -> Timestamptz,
        reason -> Nullable<Text>,
        operator -> Nullable<Text>,
    }
}

diesel::table! {
    license_addresses (license_id, address) {
        license_id -> Int8,
        address -> Text,
        last_seen -> Timestamptz,
    }
}

diesel::table! {
    license_clocks (license_id) {
        license_id -> Int8,
        started_at -> Timestamptz,
    }
}

diesel::table! {
    license_key_history (id) {
        id -> Int8,
        license_id -> Int8,
        key -> Text,
        replaced_at -> Timestamptz,
        reason -> Text,
        replaced_by -> Text,
    }
}

diesel::table! {
    licenses (id) {
        id -> Int8,
        key -> Text,
        status -> Text,
        product_ids -> Array<Nullable<Text>>,
        source_kind -> Text,
        source_id -> Text,
        stripe_customer_id -> Nullable<Text>,
        stripe_subscription_id -> Nullable<Text>,
        stripe_payment_intent -> Nullable<Text>,
        customer_email -> Nullable<Text>,
        customer_name -> Nullable<Text>,
        quantity -> Int4,
        ip_limit -> Nullable<Int4>,
        hwid_limit -> Nullable<Int4>,
        expiration_days -> Nullable<Int4>,
        expiration_start -> Nullable<Text>,
        expires_at -> Nullable<Timestamptz>,
        livemode -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        product_name -> Nullable<Text>,
        operator_override -> Nullable<Jsonb>,
        stripe_account -> Nullable<Text>,
        account_key -> Text,
    }
}

diesel::table! {
    machine_activations (id) {
        id -> Int8,
        license_id -> Int8,
        machine_hash -> Text,
        name -> Nullable<Text>,
        first_seen -> Timestamptz,
        last_seen -> Timestamptz,
    }
}

diesel::table! {
    runs (id) {
        id -> Int8,
        mode -> Text,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        outcome -> Text,
        counts -> Jsonb,
        stripe_requests -> Int8,
        emails_sent -> Int4,
        livemode -> Nullable<Bool>,
        note -> Nullable<Text>,
        error -> Nullable<Text>,
        stripe_account -> Nullable<Text>,
    }
}

diesel::table! {
    stripe_writes (id) {
        id -> Int8,
        account_key -> Text,
        target_kind -> Text,
        target_id -> Text,
        source_kind -> Text,
        purchase -> Text,
        status -> Text,
        sent_metadata -> Nullable<Jsonb>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        next_attempt_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    sync_state (name) {
        name -> Text,
        value -> Text,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(license_addresses -> licenses (license_id));
diesel::joinable!(license_clocks -> licenses (license_id));
diesel::joinable!(license_key_history -> licenses (license_id));
diesel::joinable!(machine_activations -> licenses (license_id));

diesel::allow_tables_to_appear_in_same_query!(
    email_outbox,
    license_addresses,
    license_clocks,
    license_key_history,
    license_ledger,
    licenses,
    machine_activations,
    runs,
    stripe_writes,
    sync_state,
);
