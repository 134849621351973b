# Feature flags for orchestrator execution tickets.
#
# Queried by the orchestrator as data.neuralhive.orchestrator.feature_flags.result, an object with
# five booleans that are always present:
#   enable_intelligent_scheduler  flags.intelligent_scheduler_enabled
#                                 and context.namespace in flags.scheduler_namespaces
#                                 and resource.risk_band in scheduler_risk_bands
#   enable_burst_capacity         flags.burst_capacity_enabled
#                                 and context.current_load < flags.burst_threshold
#                                 and (context.tenant_id in flags.premium_tenants
#                                      or resource.risk_band == "critical")
#   enable_predictive_allocation  flags.predictive_allocation_enabled
#                                 and context.model_accuracy > 0.85
#                                 and context.namespace in flags.beta_namespaces
#   enable_auto_scaling           flags.auto_scaling_enabled
#                                 and context.queue_depth > flags.scaling_threshold
#                                 and context.current_time falls within business hours
#   enable_experimental_features  context.namespace is dev or staging
#                                 or context.tenant_id in flags.early_access_tenants
#
# Expected input:
#   {
#     "resource": {"ticket_id": "ticket-789", "risk_band": "high"},
#     "flags": {
#       "intelligent_scheduler_enabled": true, "scheduler_namespaces": ["production", "staging"],
#       "burst_capacity_enabled": true, "burst_threshold": 0.8, "premium_tenants": ["tenant-1"],
#       "predictive_allocation_enabled": false, "beta_namespaces": ["staging"],
#       "auto_scaling_enabled": true, "scaling_threshold": 100,
#       "early_access_tenants": ["tenant-9"]
#     },
#     "context": {
#       "namespace": "production", "current_load": 0.6, "tenant_id": "tenant-1",
#       "queue_depth": 120, "current_time": 1699900000000, "model_accuracy": 0.9
#     }
#   }
# A global flag is on only when it is the boolean true. Any condition whose input is absent is
# false, so an absent global flag, list, threshold or context field turns its feature off; so does
# a load, threshold, accuracy, queue depth or time that is not a number (Rego would otherwise order
# null below and strings above every number).
#
# Our choices (not in the original catalogue):
#   - scheduler_risk_bands below: the ML scheduler serves high, medium and low tickets; critical
#     tickets stay on the standard scheduler.
#   - Business hours are Monday to Friday, 08:00 (inclusive) to 20:00 (exclusive) UTC, taken from
#     context.current_time (ms since the Unix epoch). Without current_time, auto scaling is off.
package neuralhive.orchestrator.feature_flags

import rego.v1

# Risk bands the intelligent scheduler may handle (our table).
scheduler_risk_bands := {"high", "medium", "low"}

# Namespaces where experimental features are always on.
experimental_namespaces := {"dev", "staging"}

min_model_accuracy := 0.85

business_days := {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}

business_start_hour := 8 # inclusive, UTC

business_end_hour := 20 # exclusive, UTC

resource := object.get(input, "resource", {})

flags := object.get(input, "flags", {})

context := object.get(input, "context", {})

result := {
	"enable_intelligent_scheduler": enable_intelligent_scheduler,
	"enable_burst_capacity": enable_burst_capacity,
	"enable_predictive_allocation": enable_predictive_allocation,
	"enable_auto_scaling": enable_auto_scaling,
	"enable_experimental_features": enable_experimental_features,
}

default enable_intelligent_scheduler := false

enable_intelligent_scheduler if {
	flags.intelligent_scheduler_enabled == true
	context.namespace in flags.scheduler_namespaces
	resource.risk_band in scheduler_risk_bands
}

default enable_burst_capacity := false

enable_burst_capacity if {
	flags.burst_capacity_enabled == true
	is_number(context.current_load)
	is_number(flags.burst_threshold)
	context.current_load < flags.burst_threshold
	burst_eligible
}

burst_eligible if context.tenant_id in flags.premium_tenants

burst_eligible if resource.risk_band == "critical"

default enable_predictive_allocation := false

enable_predictive_allocation if {
	flags.predictive_allocation_enabled == true
	is_number(context.model_accuracy)
	context.model_accuracy > min_model_accuracy
	context.namespace in flags.beta_namespaces
}

default enable_auto_scaling := false

enable_auto_scaling if {
	flags.auto_scaling_enabled == true
	is_number(context.queue_depth)
	is_number(flags.scaling_threshold)
	context.queue_depth > flags.scaling_threshold
	business_hours
}

business_hours if {
	is_number(context.current_time)
	ns := floor(context.current_time) * 1000000
	time.weekday(ns) in business_days
	[hour, _, _] := time.clock(ns)
	hour >= business_start_hour
	hour < business_end_hour
}

default enable_experimental_features := false

enable_experimental_features if context.namespace in experimental_namespaces

enable_experimental_features if context.tenant_id in flags.early_access_tenants
