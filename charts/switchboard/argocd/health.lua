-- Argo CD health check for switchboard.dev/v1alpha1 SupportAgent, ToolAdapter, ModelRollout and
-- ModelTraining:
-- one script, installed under each kind's key (argocd-cm.yaml beside this file carries it four
-- times; tests/test_argocd_health.py checks that and runs it against statuses the operator
-- builds). Argo CD runs a health check from argocd-cm in gopher-lua (Lua 5.1) with only the
-- base, table and a safe os library loaded: no string or math functions here, only comparisons
-- and `..`.
--
-- SupportAgent and ToolAdapter: status.phase is the operator's own verdict
-- (operator/resources/conditions.py, summarize and failed_spec); the Ready condition's reason
-- and message say why, and become the message:
--   Ready       -> Healthy
--   Progressing -> Progressing  agents: RayServiceDeploying (KubeRay not done),
--                               ToolAdapterNotReady; adapters: GatewayStarting, GatewayRollingOut
--   Degraded    -> Degraded     ServeApplicationFailed, GatewayUnderReplicated
--   Failed      -> Degraded     InvalidSpec, SecretNotFound, ConfigMapNotFound,
--                               ToolAdapterNotFound, UnknownOperation, ApplyFailed: a human acts
--
-- ModelTraining (docs/retraining.md): like a CronJob, Healthy while it waits, runs or has run,
-- whatever the gate decided (a refused candidate is the gate doing its job; the message says
-- why):  Idle, Running, Passed, Refused -> Healthy;  Failed (InvalidSpec, AgentNotFound,
-- SecretNotFound, RunFailed, BadData, ...) and Degraded (ReportUnreadable) -> Degraded.
--
-- ModelRollout: status.phase is the rollout's state (operator/resources/modelrollout.py,
-- docs/rollouts.md). Ready is True only once the candidate is promoted, so Ready=False alone
-- means nothing here:
--   Succeeded                -> Healthy      every step passed, manual weight 100, or Promoted
--   Holding                  -> Healthy      a manual weight below 100 (reason ManualWeight):
--                                            the split the spec asks for is in place, and it
--                                            stays until someone changes spec.weight; nothing
--                                            is pending (Suspended would hold the Application
--                                            and `argocd app wait --health` forever)
--   Paused                   -> Suspended    spec.paused: the weight holds until resumed
--   Progressing/Initializing -> Progressing  StepStarted, Resumed, NotEnoughTraffic,
--                                            WaitingForData, and AnalysisFailed below
--                                            failureLimit (step restarts)
--       reason ManualWeight  -> Healthy      as Holding (written by operators before Holding)
--       reason PrometheusUnavailable -> Degraded  no Prometheus, or it does not answer: the
--                                            weight holds until a human fixes it
--   Failed                   -> Degraded     rolled back (AnalysisFailed over failureLimit,
--                                            ProgressDeadlineExceeded), InvalidSpec,
--                                            AgentNotFound, AgentInvalid, ComponentNotFound
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

-- <kind>.PROGRESSING_REASONS: a part on its way, not broken. Only consulted when status.phase
-- is missing or unknown to this script (a status from another operator version).
local progressingReasons = {
  SupportAgent = { RayServiceDeploying = true, ToolAdapterNotReady = true },
  ToolAdapter = { GatewayRollingOut = true, GatewayStarting = true },
  ModelTraining = {},
}
local noStatusYet = {
  SupportAgent = "Waiting for the operator to report status",
  ToolAdapter = "Waiting for the operator to report status",
  ModelRollout = "Waiting for the operator to start the rollout",
  ModelTraining = "Waiting for the operator to report status",
}

local function rolloutHealth(status, ready)
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
  elseif phase == "Holding" then
    hs.status = "Healthy"
  elseif phase == "Paused" then
    hs.status = "Suspended"
  elseif phase == "Failed" then
    hs.status = "Degraded"
  elseif phase == "Progressing" or phase == "Initializing" then
    if reason == "PrometheusUnavailable" then
      hs.status = "Degraded"
    elseif reason == "ManualWeight" then
      hs.status = "Healthy"
    else
      hs.status = "Progressing"
    end
  elseif ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
  else
    -- No phase this script knows: Progressing. A rollout that is not Ready is normally under
    -- way, the operator writes phase Failed for every terminal problem, and
    -- progressDeadlineSeconds bounds how long a rollout can stay unfinished.
    hs.status = "Progressing"
  end
end

local function partsHealth(kind, status, ready)
  local phase = status.phase
  if ready.status == "True" then
    hs.status = "Healthy"
  elseif phase == "Failed" or phase == "Degraded" then
    hs.status = "Degraded"
  elseif phase == "Progressing" then
    hs.status = "Progressing"
  elseif ready.status == "Unknown" or progressingReasons[kind][ready.reason] then
    hs.status = "Progressing"
  else
    -- No phase this script knows and a reason it does not list as on its way: Degraded, as the
    -- operator's summarize treats every unlisted reason as broken. A wrong Degraded is seen and
    -- checked; a wrong Progressing would hide a broken object behind a spinner.
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
    if kind == "ToolAdapter" and status.availableReplicas ~= nil then
      hs.message = hs.message .. "; " .. tostring(status.availableReplicas)
        .. " gateway replica(s) available"
    end
  end
  -- A canary in flight is worth seeing in Argo CD: the agent serves two model revisions.
  if kind == "SupportAgent" and status.rollout ~= nil and status.traffic ~= nil then
    for _, route in ipairs(status.traffic) do
      if route.tag == "candidate" then
        hs.message = hs.message .. "; ModelRollout " .. tostring(status.rollout) .. " sends "
          .. tostring(route.percent) .. "% to revision " .. tostring(route.revision)
      end
    end
  end
end

local kind = obj.kind
if noStatusYet[kind] == nil then
  hs.status = "Unknown"
  hs.message = "Not a Switchboard kind: " .. tostring(kind)
  return hs
end
local status = obj.status
local generation = obj.metadata.generation
if status == nil or (status.observedGeneration == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = noStatusYet[kind]
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
if kind == "ModelRollout" then
  rolloutHealth(status, ready)
elseif ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the Ready condition"
else
  partsHealth(kind, status, ready)
end
return hs
