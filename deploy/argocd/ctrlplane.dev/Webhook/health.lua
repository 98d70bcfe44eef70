-- Argo CD health check for ctrlplane.dev/v1alpha1 Webhook (ctrlplane-operator).
-- The first line that matches decides:
--
--   metadata.deletionTimestamp set                      Progressing  Pending deletion
--   no status yet                                       Progressing  waiting for the operator
--   status.observedGeneration < metadata.generation     Progressing  the spec is not seen yet
--   status.disabled (410 Gone: EndpointGone)            Degraded     a new spec.url switches it back on
--   Ready=True                                          Healthy
--   Ready=False reason Inactive (spec.active: false)    Suspended
--   Ready=False otherwise                               Degraded     SecretNotUsable, AddressNotAllowed, ...
--
-- Failed deliveries do not make a Webhook unhealthy: each WebhookDelivery has
-- a health of its own.
--
-- Argo CD gives a health script only Lua's base and table libraries (no
-- string library, no string methods); tests/gitops.rs runs this file in Lua 5.1
-- cut down the same way, on real objects in each of these states.
local function condition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local hs = {}
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  return hs
end
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local disabled = obj.status.disabled
if disabled ~= nil then
  hs.status = "Degraded"
  hs.message = "switched off (" .. (disabled.reason or "Disabled") .. "): " .. (disabled.message or "")
  return hs
end

local ready = condition("Ready")
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check the Webhook"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
if ready.reason == "Inactive" then
  hs.status = "Suspended"
  hs.message = ready.message or "spec.active is false"
  return hs
end
hs.status = "Degraded"
hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
return hs
