-- The role reach-sync reads the shop with (deploy/compose/secrets/database-url): read-only, as
-- a recompute source should be (a read replica in production). Debezium connects as the
-- database owner instead: it creates its publication and replication slot.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reach_sync') THEN
        CREATE ROLE reach_sync LOGIN PASSWORD 'reach-sync-local-only';
    END IF;
END
$$;
ALTER ROLE reach_sync SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE shop TO reach_sync;
GRANT USAGE ON SCHEMA public TO reach_sync;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO reach_sync;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO reach_sync;
