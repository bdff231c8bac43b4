-- Argo CD health check for switchboard.dev/v1alpha1 ModelRollout.
--
-- argocd-cm.yaml (beside this file) carries the same text; tests/test_argocd_health.py checks
-- that and runs both against statuses the operator builds. Argo CD runs a health check from
-- argocd-cm in gopher-lua (Lua 5.1) with only the base, table and a safe os library loaded:
-- no string or math functions here, only comparisons and `..`.
--
-- status.phase is the rollout's state (operator/resources/modelrollout.py, docs/rollouts.md).
-- Ready is True only once the candidate is promoted, so Ready=False alone means nothing here:
--   Succeeded                -> Healthy      every step passed, manual weight 100, or Promoted
--   Paused                   -> Suspended    spec.paused: the weight holds until resumed
--   Progressing/Initializing -> Progressing  StepStarted, Resumed, WaitingForData, and
--                                            AnalysisFailed below failureLimit (step restarts)
--       reason ManualWeight  -> Suspended    a manual split is a resting state, not progress:
--                                            it holds until someone changes spec.weight
--       reason PrometheusUnavailable -> Degraded  no Prometheus URL: nothing is analysed until
--                                            a human sets one (the deadline rolls back)
--   Failed                   -> Degraded     rolled back (AnalysisFailed over failureLimit,
--                                            ProgressDeadlineExceeded), InvalidSpec,
--                                            AgentNotFound, AgentInvalid, ComponentNotFound
-- Only Ready is read, never the Progressing or Degraded conditions: when the operator fails a
-- rollout on its references it rewrites Ready alone and the other two keep their old values.
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

local status = obj.status
local generation = obj.metadata.generation
if status == nil or (status.observedGeneration == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to start the rollout"
  return hs
end
-- A status older than the spec says nothing about the spec (a resume, a new weight, a new
-- candidate after a rollback): wait until the operator has acted on it.
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
local phase = status.phase
local reason = nil
if ready ~= nil then
  reason = ready.reason
  hs.message = explain(ready)
else
  hs.message = "Phase " .. tostring(phase)
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  if reason ~= "Promoted" then
    -- The operator never writes the spec: Git still names the old model (docs/rollouts.md).
    hs.message = hs.message .. "; to finish, commit the candidate model into the SupportAgent,"
      .. " then delete this ModelRollout"
  end
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Progressing" or phase == "Initializing" then
  if reason == "PrometheusUnavailable" then
    hs.status = "Degraded"
  elseif reason == "ManualWeight" then
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
else
  -- No phase this script knows: Progressing. A rollout that is not Ready is normally under way,
  -- the operator writes phase Failed for every terminal problem, and progressDeadlineSeconds
  -- bounds how long a rollout can stay unfinished.
  hs.status = "Progressing"
end
return hs
