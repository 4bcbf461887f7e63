import type { StepStatus } from "../gen/sagaflow/orchestrator/v1/orchestrator_pb";

/** Steps run one after another; a parallel group's steps share one stage. */
export interface Stage {
  /** The parallel group's name; empty for a step that runs on its own. */
  group: string;
  steps: StepStatus[];
}

/**
 * The steps as stages run one after another: the consecutive steps of one
 * parallel group (the definition's `group`) share a stage, stacked; every
 * other step is a stage of its own.
 */
export function stagesOf(steps: readonly StepStatus[]): Stage[] {
  const stages: Stage[] = [];
  for (const step of [...steps].sort((a, b) => a.index - b.index)) {
    const last = stages[stages.length - 1];
    if (step.group && last && last.group === step.group) last.steps.push(step);
    else stages.push({ group: step.group, steps: [step] });
  }
  return stages;
}

const COMPENSATION_STATUSES = new Set(["COMPENSATING", "COMPENSATED", "NOT_COMPENSATED", "COMPENSATION_FAILED"]);

function statusLabel(status: string): string {
  return (status || "UNKNOWN").toLowerCase().replace(/_/g, " ");
}

function StepCard({ step, failed }: { step: StepStatus; failed: boolean }) {
  const status = step.status || "NOT_STARTED";
  const compensation =
    COMPENSATION_STATUSES.has(status) || step.compensationAttempts > 0 || step.compensationGeneration > 0;
  return (
    <article
      class={`step status-${status} ${failed ? "failed-step" : ""}`}
      data-testid="step"
      data-name={step.name}
      data-status={status}
      aria-label={`Step ${step.index + 1}: ${step.name}, ${statusLabel(status)}`}
    >
      <h3>
        <span class="step-index">{step.index + 1}</span> {step.name}
      </h3>
      <p class="participant">{step.participant}</p>
      <p class="step-status">
        <span class="badge">{statusLabel(status)}</span>
      </p>
      <dl class="attempts">
        <dt>action sends</dt>
        <dd>{step.attempts}</dd>
        {compensation && (
          <>
            <dt>compensation sends</dt>
            <dd>{step.compensationAttempts}</dd>
            {step.compensationGeneration > 0 && (
              <>
                <dt>operator retries</dt>
                <dd>{step.compensationGeneration}</dd>
              </>
            )}
          </>
        )}
      </dl>
      {step.reason && <p class="step-reason">{step.reason}</p>}
    </article>
  );
}

export function Pipeline(props: { steps: readonly StepStatus[]; failedStep: string }) {
  const stages = stagesOf(props.steps);
  if (stages.length === 0) return <p class="placeholder">No steps.</p>;
  return (
    <ol class="pipeline" aria-label="Steps">
      {stages.map((stage, i) => (
        <li
          key={i}
          class={`stage ${stage.steps.length > 1 ? "parallel" : ""}`}
          data-testid="stage"
          data-group={stage.group}
          aria-label={stage.group ? `Run at once (group ${stage.group})` : undefined}
        >
          {stage.group && (
            <p class="stage-label" title="These steps run at once">
              at once · {stage.group}
            </p>
          )}
          {stage.steps.map((step) => (
            <StepCard key={step.index} step={step} failed={step.name === props.failedStep} />
          ))}
        </li>
      ))}
    </ol>
  );
}
