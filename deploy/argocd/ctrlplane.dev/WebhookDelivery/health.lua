-- Argo CD health check for ctrlplane.dev/v1alpha1 WebhookDelivery (ctrlplane-operator).
-- The first line that matches decides:
--
--   metadata.deletionTimestamp set                      Progressing  Pending deletion
--   no status or no phase yet                           Progressing  waiting for the first attempt
--   phase Succeeded                                     Healthy
--   phase Failed                                        Degraded     attempts, last code and error
--   phase Pending                                       Progressing  attempts, last error, next attempt
--
-- Argo CD gives a health script only Lua's base and table libraries (no
-- string library, no string methods); tests/gitops.rs runs this file in Lua 5.1
-- cut down the same way, on real objects in each of these states.
local function lastOutcome(status)
  local parts = ""
  if status.lastStatusCode ~= nil then
    parts = "HTTP " .. status.lastStatusCode
  end
  if status.lastError ~= nil and status.lastError ~= "" then
    if parts ~= "" then
      parts = parts .. ", "
    end
    parts = parts .. status.lastError
  end
  return parts
end

local hs = {}
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  return hs
end
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the first attempt"
  return hs
end

local attempts = status.attempts or 0
local webhook = ""
if obj.spec ~= nil and obj.spec.webhookName ~= nil then
  webhook = " to " .. obj.spec.webhookName
end

if status.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "delivered" .. webhook .. " after " .. attempts .. " attempt(s)"
  return hs
end

if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "failed" .. webhook .. " after " .. attempts .. " attempt(s)"
  local outcome = lastOutcome(status)
  if outcome ~= "" then
    hs.message = hs.message .. ": " .. outcome
  end
  return hs
end

if status.phase == "Pending" then
  hs.status = "Progressing"
  if attempts == 0 then
    hs.message = "waiting for the first attempt" .. webhook
    return hs
  end
  hs.message = attempts .. " attempt(s)" .. webhook .. " so far"
  local outcome = lastOutcome(status)
  if outcome ~= "" then
    hs.message = hs.message .. ", the last: " .. outcome
  end
  if status.nextAttemptAt ~= nil then
    hs.message = hs.message .. "; next attempt at " .. status.nextAttemptAt
  end
  return hs
end

hs.status = "Unknown"
hs.message = "unknown phase " .. status.phase
return hs
