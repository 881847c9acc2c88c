-- Written by `cargo xtask bench`.
wrk.method = "GET"
local percentiles = { 10, 25, 50, 75, 90, 95, 98, 99, 99.5, 99.8, 99.9, 99.95, 99.98, 99.99, 100 }
function done(summary, latency, requests)
  for _, p in ipairs(percentiles) do
    -- wrk's percentile(100) is 0 (its rank is one past the last request): the max instead.
    local us = p < 100 and latency:percentile(p) or latency.max
    io.write(string.format("latency-percentile %g %d\n", p, us))
  end
end
