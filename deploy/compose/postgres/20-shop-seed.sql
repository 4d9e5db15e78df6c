-- A small starting state for the compose stack's shop (the schema is
-- devstack/reach_devstack/shop.sql, applied before this file as 10-shop.sql). The local stack
-- seeds with reach_devstack.shop.seed (Python); compose has no Python in its Postgres, so this
-- is the same shape in SQL: the same three merchants, who are the sandbox's tenants by their
-- external ids (deploy/compose/sandbox.yaml), a few dozen customers and their sales.
-- Deterministic, and idempotent like shop.sql (Postgres runs it only on an empty data directory).

INSERT INTO public.merchants (id, name, external_id, currency, created_at, updated_at) VALUES
    (1, 'Northwind Outfitters', 'merchant-1', 'USD', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z'),
    (2, 'Bluebird Coffee', 'merchant-2', 'EUR', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z'),
    (3, 'Atlas Home', 'merchant-3', 'GBP', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z')
ON CONFLICT (id) DO NOTHING;

INSERT INTO public.customers
    (id, merchant_id, email, first_name, last_name, phone, marketing_opt_in, created_at,
     updated_at)
SELECT n,
       1 + n % 3,
       format('customer.%s@example.com', n),
       (ARRAY['Ada', 'Alan', 'Grace', 'Linus', 'Radia', 'Tim'])[1 + n % 6],
       (ARRAY['Lovelace', 'Turing', 'Hopper', 'Torvalds', 'Perlman', 'Berners-Lee'])[1 + n % 5],
       CASE WHEN n % 4 = 0 THEN NULL ELSE format('+1555%s', lpad(n::text, 7, '0')) END,
       n % 3 <> 0,
       timestamptz '2025-01-01T00:00:00Z' + n * interval '1 day',
       timestamptz '2025-01-01T00:00:00Z' + n * interval '1 day'
  FROM generate_series(1, 30) AS n
ON CONFLICT (id) DO NOTHING;

-- Each sale belongs to its customer's merchant (the foreign key on (merchant_id, customer_id)).
INSERT INTO public.transactions
    (id, merchant_id, customer_id, status, amount_cents, currency, created_at, updated_at)
SELECT t,
       c.merchant_id,
       c.id,
       (ARRAY['completed', 'completed', 'completed', 'completed', 'pending', 'refunded',
              'cancelled'])[1 + t % 7],
       500 + (t * 7919) % 20000,
       m.currency,
       c.created_at + t * interval '1 hour',
       c.created_at + t * interval '1 hour'
  FROM generate_series(1, 90) AS t
  JOIN public.customers c ON c.id = 1 + (t * 7) % 30
  JOIN public.merchants m ON m.id = c.merchant_id
ON CONFLICT (id) DO NOTHING;

-- Explicit ids leave the identity sequences behind; new rows continue after them.
SELECT setval(pg_get_serial_sequence('public.merchants', 'id'), (SELECT max(id) FROM public.merchants));
SELECT setval(pg_get_serial_sequence('public.customers', 'id'), (SELECT max(id) FROM public.customers));
SELECT setval(pg_get_serial_sequence('public.transactions', 'id'), (SELECT max(id) FROM public.transactions));
