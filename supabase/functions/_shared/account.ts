/** The caller's own account: the models they may use and their usage (GET /v1/models, /v1/usage). */
import type { Context } from "./gateway.ts";

export async function handleModels(request: Request, context: Context): Promise<Response> {
  await context.verify(request);
  const models = await context.ledger.models(request.headers.get("x-tollgate-feature") ?? "default");
  return Response.json({
    object: "list",
    data: models.map((id) => ({ id, object: "model", created: 0, owned_by: "tollgate" })),
  });
}

export async function handleUsage(request: Request, context: Context): Promise<Response> {
  const caller = await context.verify(request);
  return Response.json(await context.ledger.usage(caller.userId, caller.isAnonymous));
}
