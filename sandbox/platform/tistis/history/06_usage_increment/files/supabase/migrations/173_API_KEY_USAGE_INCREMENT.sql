-- =====================================================================
-- Migration 173: count a key's use in one atomic statement
--
-- The API called this on every authenticated request. Reading the counters and writing them
-- back from the application lost increments when requests of one key arrived together; a
-- single UPDATE computing the new values from the stored ones does not.
-- =====================================================================

CREATE OR REPLACE FUNCTION increment_api_key_usage(
    p_key_id uuid,
    p_ip text DEFAULT NULL,
    p_endpoint varchar DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
BEGIN
    -- The right-hand sides read the row as it was: on the first request of a new day the
    -- daily counter restarts at 1. The daily-reset trigger then finds today's date and
    -- leaves the counter alone.
    UPDATE api_keys
       SET last_used_at = now(),
           last_used_ip = CASE WHEN nullif(p_ip, '') IS NULL THEN last_used_ip
                               ELSE p_ip::inet END,
           last_used_endpoint = coalesce(p_endpoint, last_used_endpoint),
           usage_count = coalesce(usage_count, 0) + 1,
           usage_count_today = CASE WHEN usage_reset_date = CURRENT_DATE
                                    THEN coalesce(usage_count_today, 0) + 1
                                    ELSE 1 END,
           usage_reset_date = CURRENT_DATE
     WHERE id = p_key_id;
END;
$$;

COMMENT ON FUNCTION increment_api_key_usage(uuid, text, varchar)
    IS 'Counts one request of an API key: last use, total and daily counters';

GRANT EXECUTE ON FUNCTION increment_api_key_usage(uuid, text, varchar) TO service_role;
