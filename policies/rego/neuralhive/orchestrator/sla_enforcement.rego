# SLA, QoS and priority checks for orchestrator execution tickets.
#
# Queried by the orchestrator as data.neuralhive.orchestrator.sla_enforcement.result, which is
#   {"allow": bool, "violations": [...], "warnings": [...]}
# where every violation and warning is {"rule", "severity", "message"}, and allow is true iff there
# are no violations. Both lists are sorted, so the same input always gives the same output.
#
# Checks:
#   deadline_in_past             critical       resource.sla.deadline < now
#   deadline_too_far             medium         resource.sla.deadline more than 7 days after now
#   qos_mismatch_risk_band       critical/high  resource.qos.delivery_mode or .consistency not allowed
#                                               for the risk band (critical when the band is
#                                               critical, high otherwise); one violation per field
#   priority_mismatch_risk_band  medium         resource.priority not allowed for the risk band
#   timeout_insufficient         high           resource.sla.timeout_ms < 1.5 x estimated_duration_ms
# Warning:
#   deadline_approaching_threshold  low  less than 20% of the time budget remains (defined below)
#
# Expected input:
#   {
#     "resource": {
#       "ticket_id": "ticket-456",
#       "risk_band": "critical" | "high" | "medium" | "low",
#       "sla": {"timeout_ms": 120000, "deadline": 1700000000000},
#       "qos": {"delivery_mode": "EXACTLY_ONCE", "consistency": "STRONG"},
#       "priority": "CRITICAL",
#       "estimated_duration_ms": 60000
#     },
#     "context": {"current_time": 1699900000000}
#   }
# Times are milliseconds since the Unix epoch. "now" is context.current_time, or the evaluation
# clock (time.now_ns() in ms, rounded down) when it is absent. A deadline or timeout check whose
# inputs are absent does not fire.
#
# Our choices (not in the original catalogue):
#   - priority_allowed below is our table: each band allows its own priority and the one above it,
#     and critical allows only CRITICAL.
#   - The time budget of deadline_approaching_threshold is resource.sla.timeout_ms: the warning fires
#     when the deadline has not passed yet but the time left until it (deadline - now) is below 20%
#     of timeout_ms.
#   - unknown_risk_band (high): a risk_band that is absent or not one of the four bands is a
#     violation, since neither the QoS nor the priority table could be applied to it.
#   - An absent qos field or priority is not allowed for any band (fail closed).
#   - A deadline exactly 7 days ahead is not "too far"; a deadline equal to now is not "in the past".
package neuralhive.orchestrator.sla_enforcement

import rego.v1

# Allowed QoS per risk band: each value is one allowed string or a list of allowed strings.
qos_requirements := {
	"critical": {
		"delivery_mode": "EXACTLY_ONCE",
		"consistency": "STRONG",
	},
	"high": {
		"delivery_mode": "EXACTLY_ONCE",
		"consistency": "STRONG",
	},
	"medium": {
		"delivery_mode": "AT_LEAST_ONCE",
		"consistency": ["STRONG", "EVENTUAL"],
	},
	"low": {
		"delivery_mode": ["AT_LEAST_ONCE", "AT_MOST_ONCE"],
		"consistency": ["STRONG", "EVENTUAL", "WEAK"],
	},
}

# Allowed resource.priority per risk band (our table).
priority_allowed := {
	"critical": ["CRITICAL"],
	"high": ["CRITICAL", "HIGH"],
	"medium": ["HIGH", "MEDIUM"],
	"low": ["MEDIUM", "LOW"],
}

max_deadline_ahead_ms := 604800000 # 7 days

# timeout_ms must be at least this multiple of estimated_duration_ms.
timeout_safety_factor := 1.5

# Percentage of the time budget under which deadline_approaching_threshold warns. Compared as
# remaining * 100 < approaching_percent * timeout_ms, which stays exact for integers.
approaching_percent := 20

resource := object.get(input, "resource", {})

sla := object.get(resource, "sla", {})

qos := object.get(resource, "qos", {})

risk_band := object.get(resource, "risk_band", null)

now_ms := object.get(input, ["context", "current_time"], floor(time.now_ns() / 1000000))

result := {
	"allow": count(violations) == 0,
	# A set iterates in sorted order, so both arrays come out sorted without a sort call.
	"violations": [v | some v in violations],
	"warnings": [w | some w in warnings],
}

# The allowed values of a requirement, as a list.
allowed_values(requirement) := requirement if is_array(requirement)

allowed_values(requirement) := [requirement] if is_string(requirement)

violations contains v if {
	not qos_requirements[risk_band]
	v := {
		"rule": "unknown_risk_band",
		"severity": "high",
		"message": sprintf("risk_band %v is not one of critical, high, medium, low.", [risk_band]),
	}
}

violations contains v if {
	sla.deadline < now_ms
	v := {
		"rule": "deadline_in_past",
		"severity": "critical",
		"message": sprintf("deadline %v is %v ms before the current time %v.", [sla.deadline, now_ms - sla.deadline, now_ms]),
	}
}

violations contains v if {
	sla.deadline - now_ms > max_deadline_ahead_ms
	v := {
		"rule": "deadline_too_far",
		"severity": "medium",
		"message": sprintf(
			"deadline %v is %v ms after the current time %v, more than the maximum of %v ms (7 days).",
			[sla.deadline, sla.deadline - now_ms, now_ms, max_deadline_ahead_ms],
		),
	}
}

violations contains v if {
	some field, requirement in qos_requirements[risk_band]
	allowed := allowed_values(requirement)
	actual := object.get(qos, field, null)
	not actual in allowed
	v := {
		"rule": "qos_mismatch_risk_band",
		"severity": qos_severity,
		"message": sprintf(
			"qos.%v %v is not allowed for risk_band %v (allowed: %v).",
			[field, actual, risk_band, concat(", ", allowed)],
		),
	}
}

qos_severity := "critical" if risk_band == "critical"
else := "high"

violations contains v if {
	allowed := priority_allowed[risk_band]
	priority := object.get(resource, "priority", null)
	not priority in allowed
	v := {
		"rule": "priority_mismatch_risk_band",
		"severity": "medium",
		"message": sprintf(
			"priority %v is not allowed for risk_band %v (allowed: %v).",
			[priority, risk_band, concat(", ", allowed)],
		),
	}
}

violations contains v if {
	minimum := timeout_safety_factor * resource.estimated_duration_ms
	sla.timeout_ms < minimum
	v := {
		"rule": "timeout_insufficient",
		"severity": "high",
		"message": sprintf(
			"timeout_ms %v is less than %v times estimated_duration_ms %v (%v).",
			[sla.timeout_ms, timeout_safety_factor, resource.estimated_duration_ms, minimum],
		),
	}
}

# Budget = sla.timeout_ms; see the header.
warnings contains w if {
	remaining := sla.deadline - now_ms
	remaining >= 0
	remaining * 100 < approaching_percent * sla.timeout_ms
	threshold := (approaching_percent * sla.timeout_ms) / 100
	w := {
		"rule": "deadline_approaching_threshold",
		"severity": "low",
		"message": sprintf(
			"Only %v ms remain until the deadline, less than %v%% of timeout_ms %v (%v ms).",
			[remaining, approaching_percent, sla.timeout_ms, threshold],
		),
	}
}
