// The `ai` edge function: Tollgate's whole request path lives in ../_shared/gateway.ts.
import { createGateway } from "../_shared/gateway.ts";

export default createGateway(Deno.env.toObject());
