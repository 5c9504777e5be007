-- Background jobs, each recording the tenant it runs for.
CREATE TABLE IF NOT EXISTS public.jobs (
    id           bigserial PRIMARY KEY,
    tenant_id    bigint NOT NULL REFERENCES public.tenants(id) ON DELETE CASCADE,
    kind         text NOT NULL,
    status       text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_queued_idx ON public.jobs (id) WHERE status = 'queued';
