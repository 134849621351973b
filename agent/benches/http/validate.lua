-- wrk script: POST /v1/data/neuralhive/orchestrator/resource_limits/result with the seed's input.
-- With MESH_AGENT_REGO_CACHE_TTL_SEC=0 every request is evaluated; otherwise repeats hit the cache.
local f = assert(io.open(os.getenv("SEED_INPUT"), "r"))
local input = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = "/v1/data/neuralhive/orchestrator/resource_limits/result"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"input": ' .. input .. '}'

response = function(status, headers, body)
  if status ~= 200 or not string.find(body, '"allow":true', 1, true) then
    io.stderr:write("unexpected answer " .. status .. ": " .. body .. "\n")
    wrk.thread:stop()
  end
end
