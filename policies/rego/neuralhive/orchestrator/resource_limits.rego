# Resource limits for orchestrator execution tickets.
#
# Queried by the orchestrator as data.neuralhive.orchestrator.resource_limits.result, which is
#   {"allow": bool, "violations": [...], "warnings": [...]}
# where every violation and warning is {"rule", "severity", "message"}, and allow is true iff there
# are no violations. Both lists are sorted, so the same input always gives the same output.
#
# Checks, per the ticket's risk_band:
#   timeout_exceeds_maximum         high    resource.sla.timeout_ms above the band's maximum
#   retries_exceed_maximum          medium  resource.sla.max_retries above the band's maximum
#   estimated_duration_unrealistic  low     resource.estimated_duration_ms below 1000 ms
#   estimated_duration_unrealistic  medium  resource.estimated_duration_ms >= resource.sla.timeout_ms
#   capabilities_not_allowed        high    one per required capability missing from the whitelist
#   concurrent_tickets_limit        high    input.context.total_tickets >= input.parameters.max_concurrent_tickets
#
# Expected input:
#   {
#     "resource": {
#       "ticket_id": "ticket-123",
#       "risk_band": "critical" | "high" | "medium" | "low",
#       "sla": {"timeout_ms": 60000, "max_retries": 3},
#       "estimated_duration_ms": 30000,
#       "required_capabilities": ["code_generation"]
#     },
#     "parameters": {"allowed_capabilities": ["code_generation", ...], "max_concurrent_tickets": 100},
#     "context": {"total_tickets": 50}
#   }
# Numeric fields are expected to be numbers. A check whose inputs are absent does not fire,
# except as noted below.
#
# Our choices (not in the original catalogue):
#   - unknown_risk_band (high): a risk_band that is absent or not one of the four bands is itself a
#     violation, since no limit can be applied to it.
#   - concurrent_tickets_limit fires at total_tickets >= max_concurrent_tickets: total_tickets counts
#     the tickets already running, so admitting this one at the limit would exceed it.
#   - capabilities_not_allowed: an absent parameters.allowed_capabilities is an empty whitelist
#     (fail closed), so every required capability is then reported.
#   - Warning concurrent_tickets_near_limit (low): total_tickets is at 80% or more of
#     max_concurrent_tickets but still below it.
package neuralhive.orchestrator.resource_limits

import rego.v1

# Maximum resource.sla.timeout_ms per risk band.
timeout_limits := {
	"critical": 7200000, # 2 h
	"high": 3600000, # 1 h
	"medium": 1800000, # 30 min
	"low": 900000, # 15 min
}

# Maximum resource.sla.max_retries per risk band.
retry_limits := {
	"critical": 5,
	"high": 3,
	"medium": 2,
	"low": 1,
}

# Shortest estimated duration that is believable.
min_estimated_duration_ms := 1000

# Percentage of max_concurrent_tickets from which concurrent_tickets_near_limit warns. Compared as
# total_tickets * 100 >= near_limit_percent * max_concurrent_tickets, which stays exact for integers.
near_limit_percent := 80

# Inputs are read directly (input.resource.sla.timeout_ms, ...): a reference to an absent field is
# undefined, which makes the check's body fail, so a check whose inputs are absent does not fire.
# (Helper rules with object.get defaults read the same but cost a rule evaluation each.)

result := {
	"allow": count(violations) == 0,
	# A set iterates in sorted order, so both arrays come out sorted without a sort call.
	"violations": [v | some v in violations],
	"warnings": [w | some w in warnings],
}

violations contains v if {
	risk_band := object.get(input, ["resource", "risk_band"], null)
	not timeout_limits[risk_band]
	v := {
		"rule": "unknown_risk_band",
		"severity": "high",
		"message": sprintf("risk_band %v is not one of critical, high, medium, low.", [risk_band]),
	}
}

violations contains v if {
	risk_band := input.resource.risk_band
	limit := timeout_limits[risk_band]
	input.resource.sla.timeout_ms > limit
	v := {
		"rule": "timeout_exceeds_maximum",
		"severity": "high",
		"message": sprintf(
			"timeout_ms %v exceeds the maximum of %v ms for risk_band %v.",
			[input.resource.sla.timeout_ms, limit, risk_band],
		),
	}
}

violations contains v if {
	risk_band := input.resource.risk_band
	limit := retry_limits[risk_band]
	input.resource.sla.max_retries > limit
	v := {
		"rule": "retries_exceed_maximum",
		"severity": "medium",
		"message": sprintf(
			"max_retries %v exceeds the maximum of %v for risk_band %v.",
			[input.resource.sla.max_retries, limit, risk_band],
		),
	}
}

violations contains v if {
	input.resource.estimated_duration_ms < min_estimated_duration_ms
	v := {
		"rule": "estimated_duration_unrealistic",
		"severity": "low",
		"message": sprintf(
			"estimated_duration_ms %v is below the minimum of %v ms.",
			[input.resource.estimated_duration_ms, min_estimated_duration_ms],
		),
	}
}

violations contains v if {
	input.resource.estimated_duration_ms >= input.resource.sla.timeout_ms
	v := {
		"rule": "estimated_duration_unrealistic",
		"severity": "medium",
		"message": sprintf(
			"estimated_duration_ms %v is not below timeout_ms %v.",
			[input.resource.estimated_duration_ms, input.resource.sla.timeout_ms],
		),
	}
}

violations contains v if {
	allowed := object.get(input, ["parameters", "allowed_capabilities"], [])
	some capability in input.resource.required_capabilities
	not capability in allowed
	v := {
		"rule": "capabilities_not_allowed",
		"severity": "high",
		"message": sprintf("Required capability %v is not in allowed_capabilities.", [capability]),
	}
}

# >= rather than >: see the header.
violations contains v if {
	input.context.total_tickets >= input.parameters.max_concurrent_tickets
	v := {
		"rule": "concurrent_tickets_limit",
		"severity": "high",
		"message": sprintf(
			"total_tickets %v has reached max_concurrent_tickets %v.",
			[input.context.total_tickets, input.parameters.max_concurrent_tickets],
		),
	}
}

warnings contains w if {
	input.context.total_tickets * 100 >= near_limit_percent * input.parameters.max_concurrent_tickets
	input.context.total_tickets < input.parameters.max_concurrent_tickets
	w := {
		"rule": "concurrent_tickets_near_limit",
		"severity": "low",
		"message": sprintf(
			"total_tickets %v is at %v%% or more of max_concurrent_tickets %v.",
			[input.context.total_tickets, near_limit_percent, input.parameters.max_concurrent_tickets],
		),
	}
}
