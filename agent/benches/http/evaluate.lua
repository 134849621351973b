-- wrk script: POST /evaluate with a seed incident (memory leak, matches one seed rule).
wrk.method = "POST"
wrk.path = "/evaluate"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"event_type":"memory_leak","severity":9,"context":{"service":"payment-api","memory_usage_mb":8192},"timestamp":"2025-10-20T12:00:00"}'

-- Any non-200 answer is a failed benchmark, not a fast one.
response = function(status, headers, body)
  if status ~= 200 then
    io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
    wrk.thread:stop()
  end
end
