import { expect, it } from "vitest";
import * as api from "../src/index.ts";

it("exports exactly the public runtime names", () => {
  expect(Object.keys(api).sort()).toEqual([
    "StreamShaper",
    "createSSEDecoder",
    "createShaper",
    "directFetch",
    "friendlyMessage",
    "interpretEvent",
    "parseErrorBody",
    "resumeChat",
    "shapeItems",
    "streamChat",
    "streamMessages",
    "streamResponses",
    "toFlatText",
  ]);
});
