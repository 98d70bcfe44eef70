-- Argo CD health check for ctrlplane.dev/v1alpha1 Instance (ctrlplane-operator).
-- The first line that matches decides:
--
--   metadata.deletionTimestamp set                      Progressing  Pending deletion
--   no status yet                                       Progressing  waiting for the operator
--   status.observedGeneration < metadata.generation     Progressing  the spec is not seen yet
--   Synced=False                                        Degraded     its reason and message
--   Running, Ready=True, Progressing reason RolledBack  Degraded     the new image was rolled back
--   Running, Ready=True                                 Healthy
--   Running, Ready=False reason Updating                Progressing  a rollout, restart or scale
--   Running, Ready=False otherwise                      Degraded     replicas went unready
--   Provisioning, Starting, Stopping                    Progressing
--   Stopped, Suspended=True                             Suspended    spec.suspend's reason
--   Stopped, spec.state Stopped                         Healthy      stopped, as the spec asks
--   Failed                                              Degraded     Ready's message says why
--   Destroying, Destroyed                               Progressing
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

local function messageOf(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
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

local synced = condition("Synced")
if synced ~= nil and synced.status == "False" then
  hs.status = "Degraded"
  hs.message = (synced.reason or "NotSynced") .. ": " .. messageOf(synced, "the last reconcile failed")
  return hs
end

local phase = obj.status.phase
local ready = condition("Ready")
if phase == "Running" then
  if ready ~= nil and ready.status == "True" then
    local progressing = condition("Progressing")
    if progressing ~= nil and progressing.reason == "RolledBack" then
      hs.status = "Degraded"
      hs.message = messageOf(progressing, "the release was rolled back")
      return hs
    end
    hs.status = "Healthy"
    hs.message = messageOf(ready, "Running")
    return hs
  end
  if ready == nil or ready.status == "Unknown" or ready.reason == "Updating" then
    hs.status = "Progressing"
    hs.message = messageOf(ready, "Running; waiting for its replicas")
    return hs
  end
  hs.status = "Degraded"
  hs.message = messageOf(ready, "not every replica is ready")
  return hs
end

if phase == "Provisioning" or phase == "Starting" or phase == "Stopping" then
  hs.status = "Progressing"
  hs.message = messageOf(ready, phase)
  return hs
end

if phase == "Stopped" then
  local suspended = condition("Suspended")
  if suspended ~= nil and suspended.status == "True" then
    hs.status = "Suspended"
    hs.message = messageOf(suspended, "suspended")
    return hs
  end
  if obj.spec ~= nil and obj.spec.state == "Stopped" then
    hs.status = "Healthy"
    hs.message = messageOf(ready, "stopped, as spec.state asks")
    return hs
  end
  hs.status = "Progressing"
  hs.message = "Stopped; waiting for it to start"
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = messageOf(ready, "the Instance failed")
  return hs
end

if phase == "Destroying" or phase == "Destroyed" then
  hs.status = "Progressing"
  hs.message = messageOf(ready, "the Instance is being deleted")
  return hs
end

if phase == nil then
  hs.status = "Progressing"
  hs.message = messageOf(ready, "Waiting for the operator to report a phase")
  return hs
end

hs.status = "Unknown"
hs.message = "unknown phase " .. phase
return hs
