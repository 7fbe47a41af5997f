// circuits.js — weight-only figures: the selected head's full OV and QK circuits as
// token × token maps, every head's eigenvalues in the complex plane, the composition
// maps against the random baseline and the K-composed induction term.
function mapOf(m){if(!m._u)m._u=b64(m.data);return m._u;}
function circuitMap(box,m,what,head){
  const u=mapOf(m),k=m.tokens.length,labels=m.tokens.map(tokLabel);
  const cell=clamp(Math.floor(448/k),4,16);
  return heatmap(box,{rows:k,cols:k,cell:cell,colour:(r,c)=>div((u[r*k+c]-128)/127),rowLabels:labels,colLabels:labels,cls:'circuit',
    tip:(r,c)=>what+' '+head+'\n'+(what==='OV'?'attended '+labels[r]+' → logit '+labels[c]:'query '+labels[r]+' · key '+labels[c])+'  '+fmt((u[r*k+c]-128)/127*m.scale)});
}
function drawCircuits(){
  const [l,h]=S.head,W=D.weights,e=W.eigen[l][h];
  for(const [what,maps,id] of [['OV',W.ov,'ov-map'],['QK',W.qk,'qk-map']]){
    const box=$(id);box.innerHTML='';const c=circuitMap(box,maps[l][h],what,headName(l,h));c.id=id+'-canvas';
  }
  $('ov-title').textContent='OV circuit of '+headName(l,h)+' (copying score '+e.copying.toFixed(2)+')';
  $('qk-title').textContent='QK circuit of '+headName(l,h)+' (Σλ/Σ|λ| '+e.qk_score.toFixed(2)+')';
  const lg=$('circ-legend');lg.innerHTML='';
  legend(lg,'div',0,W.ov[l][h].scale,'OV entry');legend(lg,'div',0,W.qk[l][h].scale,'QK entry');
  document.querySelectorAll('.small').forEach(t=>t.classList.toggle('sel',+t.dataset.l===l&&+t.dataset.h===h));
}
// One head's eigenvalues: radius compressed as sqrt(|λ|/max|λ|), angle kept.
function eigenPlot(parent,pts,other,size,title,score){
  const d=el('div',{class:'small'},parent);
  const [c,x]=mkCanvas(d,size,size,'eig');const r0=size/2-4,cx=size/2,cy=size/2;
  x.fillStyle='#fff';x.fillRect(0,0,size,size);
  x.strokeStyle='#d5d9de';x.beginPath();x.arc(cx,cy,r0,0,2*Math.PI);x.moveTo(cx-r0,cy);x.lineTo(cx+r0,cy);x.moveTo(cx,cy-r0);x.lineTo(cx,cy+r0);x.stroke();
  const mx=Math.max(1e-30,...pts.map(z=>Math.hypot(z[0],z[1])),...(other||[]).map(z=>Math.hypot(z[0],z[1])));
  const pos=z=>{const m=Math.hypot(z[0],z[1]);if(m===0)return [cx,cy];const s=Math.sqrt(m/mx)*r0/m;return [cx+z[0]*s,cy-z[1]*s];};
  if(other){x.strokeStyle='#888';for(const z of other){const [a,b]=pos(z);x.beginPath();x.arc(a,b,3,0,2*Math.PI);x.stroke();}}
  for(const z of pts){const [a,b]=pos(z);x.fillStyle=z[0]>=0?'#c0392b':'#2c6fbb';x.beginPath();x.arc(a,b,2.2,0,2*Math.PI);x.fill();}
  const t=el('div',null,d);t.innerHTML=title+' <b style="color:'+(score>=0?'#b03a2e':'#2c6fbb')+'">'+score.toFixed(2)+'</b>';
  countColours(c);c.classList.add('figure');
  return d;
}
function drawEigen(){
  const W=D.weights,C=D.compare;
  for(const [id,key,sc] of [['eig-ov','ov','copying'],['eig-qk','qk','qk_score']]){
    const box=$(id);box.innerHTML='';
    const w=box.clientWidth||1300,size=Math.max(48,Math.min(110,Math.floor((w-(H-1)*4)/H)-4));
    box.style.gridTemplateColumns='repeat('+H+','+(size+4)+'px)';
    for(let l=0;l<L;l++)for(let h=0;h<H;h++){
      const e=W.eigen[l][h];
      const d=eigenPlot(box,e[key],C?C.eigen[l][h][key]:null,size,headName(l,h),e[sc]);
      d.dataset.l=l;d.dataset.h=h;d.addEventListener('click',()=>selectHead(l,h));
      d.title=headName(l,h)+': '+e[key].length+' eigenvalues; Σλ/Σ|λ| = '+e[sc].toFixed(3)+(C?' (comparison model '+C.eigen[l][h][sc].toFixed(3)+')':'');
    }
  }
}
function drawComposition(){
  const C=D.weights.composition;if(L<2)return;
  const rows=(L-1)*H,cols=(L-1)*H;
  let mx=1e-9;for(const m of [C.k,C.q,C.v])for(let a=0;a<L;a++)for(let b=0;b<H;b++)for(let c=a+1;c<L;c++)for(let d=0;d<H;d++)mx=Math.max(mx,Math.abs(m[a][b][c][d]-C.baseline));
  const w=$('composition').clientWidth||1350;
  const cell=clamp(Math.floor((w/3-96)/cols),3,20);
  const rl=[],cl=[];for(let i=0;i<rows;i++)rl.push(headName(Math.floor(i/H),i%H));for(let i=0;i<cols;i++)cl.push(headName(1+Math.floor(i/H),i%H));
  for(const [mode,m] of [['K',C.k],['Q',C.q],['V',C.v]]){
    const box=$('comp-'+mode);box.innerHTML='';
    const val=(r,c)=>{const l1=Math.floor(r/H),h1=r%H,l2=1+Math.floor(c/H),h2=c%H;return l1>=l2?null:m[l1][h1][l2][h2];};
    const cv=heatmap(box,{rows:rows,cols:cols,cell:cell,font:10,rowLabels:rl,colLabels:cl,cls:'composition',
      colour:(r,c)=>{const v=val(r,c);return v===null?null:div((v-C.baseline)/mx);},
      tip:(r,c)=>{const v=val(r,c);return v===null?null:mode+'-composition '+rl[r]+' → '+cl[c]+'\nscore '+v.toFixed(3)+'  baseline '+C.baseline.toFixed(3)+'  difference '+(v-C.baseline).toFixed(3);},
      click:(r,c)=>selectHead(1+Math.floor(c/H),c%H)});
    cv.id='comp-'+mode+'-canvas';
  }
  const lg=$('comp-legend');lg.innerHTML='';legend(lg,'div',0,mx,'score − baseline');
  const I=D.weights.induction,box=$('induction');box.innerHTML='';
  if(I){
    el('h3',null,box,'K-composed induction term of the strongest pair '+headName(I.from[0],I.from[1])+' → '+headName(I.to[0],I.to[1])+' (K-composition '+I.score.toFixed(3)+', Σλ/Σ|λ| '+I.eigen_score.toFixed(2)+')');
    el('p',{class:'cap'},box).innerHTML='W<sub>E</sub>W<sub>Q</sub> of '+headName(I.to[0],I.to[1])+' against keys carrying '+headName(I.from[0],I.from[1])+'\'s output, W<sub>E</sub>W<sub>Q</sub>(W<sub>E</sub>W<sub>OV</sub>W<sub>K</sub>)<sup>T</sup>: row = query token, column = the token the earlier head moved into the key position (for a previous-token head: the token before the key). A red diagonal = the head attends to keys that follow an earlier copy of the current token — the induction mechanism.';
    const r=el('div',{class:'row'},box);circuitMap(r,I.map,'K-term',headName(I.from[0],I.from[1])+'→'+headName(I.to[0],I.to[1])).id='induction-canvas';
    legend(r,'div',0,I.map.scale,'term entry');
  }
}
