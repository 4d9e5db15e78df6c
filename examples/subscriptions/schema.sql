-- A second sample partner: fitness studios selling memberships (plans) and invoicing members.
-- Used by `reach-sync test examples/subscriptions.yaml` (examples/subscriptions.cases); amounts
-- are exact decimals (numeric), which the `decimal` format sends as they are.

CREATE TABLE studios (
    id          bigint PRIMARY KEY,
    slug        text NOT NULL UNIQUE,          -- the tenant's external id in Reach
    name        text NOT NULL
);

CREATE TABLE plans (
    id          bigint PRIMARY KEY,
    studio_id   bigint NOT NULL REFERENCES studios (id),
    name        text NOT NULL,
    billing     text NOT NULL CHECK (billing IN ('month', 'year'))
);

CREATE TABLE members (
    id          bigint PRIMARY KEY,
    studio_id   bigint NOT NULL REFERENCES studios (id),
    plan_id     bigint REFERENCES plans (id),
    email       text NOT NULL,
    full_name   text,
    joined_at   timestamptz NOT NULL
);

CREATE TABLE invoices (
    id          bigint PRIMARY KEY,
    member_id   bigint NOT NULL REFERENCES members (id),
    total       numeric(12, 2) NOT NULL,
    currency    text NOT NULL DEFAULT 'EUR',
    status      text NOT NULL CHECK (status IN ('open', 'paid', 'void')),
    issued_at   timestamptz NOT NULL
);

-- Invoices make their member dirty through a foreign key: a real before image says who.
ALTER TABLE invoices REPLICA IDENTITY FULL;
-- Plans make their members dirty (a plan renamed or moved to yearly billing).
ALTER TABLE members REPLICA IDENTITY FULL;
