-- Pilots logged in with EVE SSO (see src/auth/): one row per character, its tokens sealed with
-- TOKEN_KEY (nonce ‖ ciphertext ‖ tag, never the token itself); the API sessions handed out at
-- login, kept only as hashes; and the login attempts under way (state → PKCE verifier).

CREATE TABLE sso_logins (
    character_id      int8 PRIMARY KEY,
    character_name    text NOT NULL,
    -- Changes when the character moves to another EVE account; its old sessions end then.
    owner_hash        text NOT NULL,
    scopes            text[] NOT NULL DEFAULT '{}',
    refresh_token     bytea NOT NULL,
    access_token      bytea NOT NULL,
    access_expires_at timestamptz NOT NULL,
    corporation_id    int8,
    alliance_id       int8,
    -- The SSO refused the refresh token (revoked, or the app's access removed): nothing works
    -- for this character until the pilot logs in again.
    needs_login       bool NOT NULL DEFAULT false,
    refused_at        timestamptz,
    -- The pilot's own killmail history (worker-user-killmails): when it was last read, and the
    -- newest killmail it had, where the next read may stop.
    last_sync_at      timestamptz,
    newest_killmail_id int8,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sso_logins_active ON sso_logins (last_sync_at NULLS FIRST) WHERE NOT needs_login;

CREATE TABLE sessions (
    -- SHA-256 of the bearer token: a leaked table does not give working sessions.
    token_hash   bytea PRIMARY KEY,
    character_id int8 NOT NULL REFERENCES sso_logins ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz
);
CREATE INDEX sessions_character ON sessions (character_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

CREATE TABLE sso_states (
    -- SHA-256 of the `state` parameter; single use (deleted when the callback takes it).
    state_hash    bytea PRIMARY KEY,
    code_verifier text NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX sso_states_expires ON sso_states (expires_at);
