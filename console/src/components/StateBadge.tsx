import type { SagaState } from "../gen/sagaflow/orchestrator/v1/orchestrator_pb";
import { stateLabel, stateName } from "../format";

export function StateBadge(props: { state: SagaState; testId?: string }) {
  const name = stateName(props.state);
  return (
    <span class={`badge state-${name}`} data-testid={props.testId} data-state={name}>
      {stateLabel(props.state)}
    </span>
  );
}
