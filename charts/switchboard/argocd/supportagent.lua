-- Argo CD health check for switchboard.dev/v1alpha1 SupportAgent.
--
-- argocd-cm.yaml (beside this file) carries the same text; tests/test_argocd_health.py checks
-- that and runs both against statuses the operator builds. Argo CD runs a health check from
-- argocd-cm in gopher-lua (Lua 5.1) with only the base, table and a safe os library loaded:
-- no string or math functions here, only comparisons and `..`.
--
-- status.phase is the operator's own verdict (operator/resources/conditions.py, summarize and
-- failed_spec); the Ready condition's reason and message say why, and become the message:
--   Ready       -> Healthy
--   Progressing -> Progressing  RayServiceDeploying (KubeRay not done), ToolAdapterNotReady
--   Degraded    -> Degraded     ServeApplicationFailed (DEPLOY_FAILED or UNHEALTHY)
--   Failed      -> Degraded     InvalidSpec, SecretNotFound, ConfigMapNotFound,
--                               ToolAdapterNotFound, UnknownOperation: a human must act
local hs = {}

local function condition(status, conditionType)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function explain(c)
  if c.message == nil or c.message == "" then
    return tostring(c.reason)
  end
  return tostring(c.reason) .. ": " .. tostring(c.message)
end

-- supportagent.PROGRESSING_REASONS: a part on its way, not broken. Only consulted when
-- status.phase is missing or unknown to this script (a status from another operator version).
local progressingReasons = {
  RayServiceDeploying = true,
  ToolAdapterNotReady = true,
}

local status = obj.status
local generation = obj.metadata.generation
if status == nil or (status.observedGeneration == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
-- A status older than the spec says nothing about the spec: Argo CD would otherwise call a
-- just-synced change Healthy on the strength of the previous generation.
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
local phase = status.phase
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the Ready condition"
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "Degraded" then
  hs.status = "Degraded"
elseif phase == "Progressing" then
  hs.status = "Progressing"
elseif ready.status == "Unknown" or progressingReasons[ready.reason] then
  hs.status = "Progressing"
else
  -- No phase this script knows and a reason it does not list as on its way: Degraded, as the
  -- operator's summarize treats every unlisted reason as broken. A wrong Degraded is seen and
  -- checked; a wrong Progressing would hide a broken agent behind a spinner.
  hs.status = "Degraded"
end

hs.message = explain(ready)
if hs.status == "Degraded" then
  -- Ready names the first part not ready; when that one is merely on its way, the Degraded
  -- condition names the part that is broken.
  local degraded = condition(status, "Degraded")
  if degraded ~= nil and degraded.status == "True" and degraded.reason ~= ready.reason then
    hs.message = hs.message .. "; " .. explain(degraded)
  end
end
if hs.status == "Healthy" then
  hs.message = tostring(ready.message)
end

-- A canary in flight is worth seeing in Argo CD: the agent serves two model revisions.
if status.rollout ~= nil and status.traffic ~= nil then
  for _, route in ipairs(status.traffic) do
    if route.tag == "candidate" then
      hs.message = hs.message .. "; ModelRollout " .. tostring(status.rollout) .. " sends "
        .. tostring(route.percent) .. "% to revision " .. tostring(route.revision)
    end
  end
end
return hs
